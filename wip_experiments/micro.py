import sys, torch, random, time
from transformers import LlamaConfig, LlamaForCausalLM
torch.set_num_threads(1)
SH = list(range(10, 16)); CO = list(range(20, 26)); SZ = [30, 31]; RW = [40, 41, 42]; CL = [43, 44, 45]; EMPTY = 50; Q = 60
def make(bs, g, gap):
    X = torch.zeros(bs, 9 + 1 + gap + 1, 5, dtype=torch.long) - 1; ids = torch.full((bs, 9 + gap + 2), 1); tgt = torch.full((bs, 9+gap+2), -100)
    for b in range(bs):
        n = g.randint(1, 4); cells = g.sample(range(9), n); shapes = g.sample(SH, n)
        for c in range(9):
            X[b, c] = torch.tensor([RW[c//3], CL[c%3], EMPTY, EMPTY, EMPTY])
        for c, s in zip(cells, shapes):
            X[b, c, 2:] = torch.tensor([g.choice(SZ), g.choice(CO), s])
        k = g.randrange(n); ids[b, 9] = Q; ids[b, 10:10+gap] = torch.tensor([g.randrange(70, 90) for _ in range(gap)]); ids[b, 10+gap] = shapes[k]
        tgt[b, 10+gap] = int(X[b, cells[k], 3])
    return ids, X, tgt
def run(lr, layers, heads, tie, agg, gap, steps=400, hidden=128, theta=10000.0):
    torch.manual_seed(0); g = random.Random(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=hidden, intermediate_size=hidden*3, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads, tie_word_embeddings=tie, rope_theta=theta)
    m = LlamaForCausalLM(cfg); E = m.get_input_embeddings()
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    for step in range(steps):
        ids, X, tgt = make(64, g, gap)
        x = E(ids).clone(); cell = E(X[:, :9].clamp(min=0)); x[:, :9] = cell.mean(2) if agg == 'mean' else cell.sum(2)
        logits = m(inputs_embeds=x).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 100), tgt[:, 1:].reshape(-1), ignore_index=-100) if False else torch.nn.functional.cross_entropy(logits.reshape(-1,100), tgt.reshape(-1), ignore_index=-100)
        loss.backward(); opt.step(); opt.zero_grad()
        if (step+1) % 100 == 0:
            acc = (logits.argmax(-1)[tgt != -100] == tgt[tgt != -100]).float().mean().item()
            print(f"lr={lr} L={layers} H={heads} tie={tie} agg={agg} gap={gap} step {step+1} loss {loss.item():.3f} acc {acc:.2f}", flush=True)
for args in [(1e-3, 2, 4, True, 'mean', 0), (3e-3, 2, 4, True, 'mean', 0), (1e-3, 2, 4, True, 'sum', 0), (1e-3, 2, 4, False, 'mean', 0), (1e-3, 2, 4, True, 'mean', 8)]:
    t = time.time(); run(*args); print('t', round(time.time()-t,1))
