import os, sys, random, torch, time
sys.path.insert(0, '/work/main')
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from synthetic.sheet import record_ids, scene_sheet, sheet_embeddings
from synthetic.stage0.llm import collate
from synthetic.world import sample_scene
torch.set_num_threads(1); torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained('/work/exp/ship_world/tokenizer')
CLIP = os.environ.get('CLIP') == '1'; UNIQUE = os.environ.get('UNIQUE') == '1'; VALONLY = os.environ.get('VALONLY') == '1'; SYS = os.environ.get('TEMPLATE', 'vicuna_v1')
def inv(scene, rng):
    objs = list(scene.objects)
    if UNIQUE:
        seen = {}
        for o in objs: seen[o.shape] = seen.get(o.shape, 0) + 1
        objs = [o for o in objs if seen[o.shape] == 1] or objs[:1]
    rng.shuffle(objs)
    if os.environ.get("SORTED") == "1": objs.sort(key=lambda o: (o.shape, o.colour))
    return {"id": "inv", "conversations": [{"from": "human", "value": "<image>\nList every object by its shape, each followed by its color."},
            {"from": "gpt", "value": ", ".join(f"{o.shape} {o.colour}" for o in objs) + "."}]}
shape_ids = {tok(" " + s, add_special_tokens=False).input_ids[0] for s in ["circle", "square", "triangle", "star", "cross", "diamond"]}
def make(i, rng):
    sc = sample_scene(0, 'corpus', i, held_out_share=0.0)
    r = record_ids(inv(sc, rng), tok, SYS, scene_sheet(sc))
    labels = r.labels
    if VALONLY:
        labels = [l if (l != -100 and r.input_ids[p-1] in shape_ids) else -100 for p, l in enumerate(labels)]
    return type(r)(r.input_ids, labels, r.cell_ids)
rng = random.Random(0)
train = [make(i, rng) for i in range(8000)]; test = [make(100000 + i, rng) for i in range(300)]
m = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True, pad_token_id=tok.pad_token_id))
opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.95))
def acc():
    b = collate(test, tok.pad_token_id)
    with torch.no_grad():
        lg = m(inputs_embeds=sheet_embeddings(m.get_input_embeddings(), b.input_ids, b.cell_ids), attention_mask=b.attention_mask).logits
    pred = lg.argmax(-1)[:, :-1]; nxt = b.input_ids[:, 1:]; prev = b.input_ids[:, :-1]
    sel = torch.tensor([[p in shape_ids for p in row] for row in prev.tolist()]) & (b.labels[:, 1:] != -100)
    return (pred[sel] == nxt[sel]).float().mean().item()
t0 = time.time()
for step in range(int(sys.argv[1])):
    batch = collate(rng.sample(train, 64), tok.pad_token_id)
    loss = m(inputs_embeds=sheet_embeddings(m.get_input_embeddings(), batch.input_ids, batch.cell_ids), attention_mask=batch.attention_mask, labels=batch.labels).loss
    loss.backward()
    if CLIP: torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step(); opt.zero_grad()
    if (step + 1) % 50 == 0:
        print(step + 1, round(loss.item(), 3), 'value acc', round(acc(), 3), round(time.time() - t0), flush=True)
