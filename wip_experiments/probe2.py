import sys, torch
sys.path.insert(0, '/work/wt/cell')
from pathlib import Path
from transformers import AutoTokenizer, LlamaForCausalLM
from synthetic.corpus import read_corpus
from synthetic.sheet import record_ids, SheetRecord
from synthetic.stage0.llm import collate, sheet_loss
from synthetic.sheet import sheet_embeddings
torch.set_num_threads(1)
tok = AutoTokenizer.from_pretrained(sys.argv[1]); m = LlamaForCausalLM.from_pretrained(sys.argv[1]).eval()
entries = [e for e in read_corpus(Path('/work/exp2/c1/text_corpus.jsonl'))[-30000:] if e['id'].startswith('inventory')][:300]
starts = {tok.convert_tokens_to_ids(':'), tok.convert_tokens_to_ids(',')}
from collections import defaultdict
hits = defaultdict(list)
for e in entries:
    r = record_ids(e, tok, e['template'], e['sheet'])
    b = collate([r], tok.pad_token_id)
    with torch.no_grad():
        pred = m(inputs_embeds=sheet_embeddings(m.get_input_embeddings(), b.input_ids, b.cell_ids)).logits[0].argmax(-1)
    kind = e['conversations'][0]['value'].split('its ')[1].split(',')[0] + '->' + e['conversations'][0]['value'].split('its ')[2].rstrip('.')
    for p in range(1, len(r.input_ids)):
        if r.labels[p] != -100 and r.input_ids[p - 1] not in starts and tok.convert_ids_to_tokens(r.input_ids[p]) not in (',', '.', '</s>'):
            hits[kind].append(int(pred[p - 1]) == r.input_ids[p])
for k, v in sorted(hits.items()): print(k, round(100 * sum(v) / len(v), 1), len(v))
