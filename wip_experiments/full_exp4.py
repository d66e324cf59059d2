import sys, time, json, torch, random
sys.path.insert(0, '/work/wt/cell')
from pathlib import Path
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup
from synthetic.stage0.config import LLMPretrainConfig
from synthetic.stage0.llm import build_llm, collate, corpus_records, length_batches, sheet_loss
from synthetic.stage0.steps import optimizer_step
from synthetic.stage0.text_gate import text_gate
world = Path(sys.argv[1]); steps = int(sys.argv[2]); lr = float(sys.argv[3]); torch.set_num_threads(int(sys.argv[4])); out = sys.argv[5]; every = int(sys.argv[6])
cfg = LLMPretrainConfig(steps=steps, lr=lr); torch.manual_seed(0); WARM = int(sys.argv[7])
tok = AutoTokenizer.from_pretrained(str(world / 'tokenizer'))
recs = corpus_records(world / 'text_corpus.jsonl', tok)
from synthetic.corpus import read_corpus
from synthetic.sheet import SheetRecord
entries = read_corpus(world / 'text_corpus.jsonl')
starts = {tok.convert_tokens_to_ids(':'), tok.convert_tokens_to_ids(',')}
def values_only(r):
    return SheetRecord(r.input_ids, [-100 if (l != -100 and (r.input_ids[p - 1] in starts or p in punct(r))) else l for p, l in enumerate(r.labels)], r.cell_ids)
stop = {tok.convert_tokens_to_ids(','), tok.convert_tokens_to_ids('.'), tok.eos_token_id}
def punct(r):
    return {p for p, t in enumerate(r.input_ids) if t in stop}
def easy(e):
    q = e['conversations'][0]['value']; items = [x.split(' ')[0] for x in e['conversations'][1]['value'].rstrip('.').split(', ')]
    return len(set(items)) == len(items)
inv = [i for i, e in enumerate(entries) if e['id'].startswith('inventory')]
easy_inv = [i for i in inv if easy(entries[i])]
print('easy', len(easy_inv), 'of', len(inv), flush=True)
for i in inv: recs[i] = values_only(recs[i])
print(tok.convert_ids_to_tokens([t for t in recs[inv[1]].labels if t != -100]))
WARM = int(sys.argv[7])
batches = length_batches([len(r.input_ids) for r in recs], cfg.batch_tokens)
invrecs = [recs[i] for i in easy_inv]
warm_batches = length_batches([len(r.input_ids) for r in invrecs], cfg.batch_tokens)
print('records', len(recs), 'batches', len(batches), flush=True)
from transformers import LlamaForCausalLM
model = LlamaForCausalLM.from_pretrained(sys.argv[8]) if len(sys.argv) > 8 else build_llm(cfg, tok)
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
sch = get_cosine_schedule_with_warmup(opt, 50, steps - WARM)
g = random.Random(0); t0 = time.time(); losses = []
for step in range(steps):
    if step < WARM:
        b = collate(g.sample(invrecs, 64), tok.pad_token_id)
        loss = sheet_loss(model, b); loss.backward(); opt.step(); opt.zero_grad(); losses.append(loss.item())
        if (step + 1) % 50 == 0: print(step + 1, round(sum(losses[-50:]) / 50, 4), round(time.time() - t0), flush=True)
        if step + 1 == WARM: model.save_pretrained(out + '_warm'); tok.save_pretrained(out + '_warm')
        continue
    else:
        b = collate([recs[i] for i in g.choice(batches)], tok.pad_token_id)
    losses.append(optimizer_step(sheet_loss(model, b), model, opt, sch, 'LLM', step))
    if (step + 1) % 50 == 0:
        print(step + 1, round(sum(losses[-50:]) / 50, 4), round(time.time() - t0), flush=True)
    if (step + 1) % every == 0 or step + 1 == steps:
        print('gate', step + 1, json.dumps({k: round(v, 1) for k, v in text_gate(model, tok, num_scenes=100).items()}), flush=True)
        model.save_pretrained(out); tok.save_pretrained(out)
