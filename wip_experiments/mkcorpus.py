import sys, json, shutil
from pathlib import Path
sys.path.insert(0, '/work/main')
from synthetic.corpus import corpus_records, CORPUS_FILE
src, dst = Path('/work/exp/ship_world'), Path(sys.argv[1])
dst.mkdir(parents=True, exist_ok=True)
shutil.copytree(src / 'tokenizer', dst / 'tokenizer', dirs_exist_ok=True)
w = json.loads((src / 'world.json').read_text()); w['variant'] = sys.argv[1]
(dst / 'world.json').write_text(json.dumps(w))
with open(dst / CORPUS_FILE, 'w') as f:
    for r in corpus_records(0, int(sys.argv[2]), 4000):
        f.write(json.dumps(r) + '\n')
