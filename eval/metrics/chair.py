"""CHAIR (Rohrbach et al. 2018) on descriptions: CHAIR_s, CHAIR_i, plus object recall so saying less cannot win.

Objects are matched as exact words: each category name, its plural, and the synonyms of a small table written
for this project (not the original CHAIR's word lists, which we do not copy). Longer names win over shorter
ones inside them ("hot dog" over "dog"). On the synthetic world the categories are colour-shape pairs
("red circle"), so matching there is exact.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# A few common COCO synonyms, written by hand for this project; used only for categories the annotations name.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "people", "boy", "girl", "child", "kid", "player", "lady", "guy"),
    "bicycle": ("bike",),
    "motorcycle": ("motorbike",),
    "airplane": ("plane", "jet", "aircraft", "aeroplane"),
    "tv": ("television",),
    "couch": ("sofa",),
    "dining table": ("table",),
    "cell phone": ("phone", "cellphone", "mobile phone"),
    "donut": ("doughnut",),
    "hot dog": ("hotdog",),
    "cup": ("mug",),
    "handbag": ("purse",),
    "sports ball": ("ball",),
    "potted plant": ("houseplant", "plant"),
    "teddy bear": ("teddy",),
    "laptop": ("notebook computer",),
}

# Plurals the suffix rules get wrong.
_IRREGULAR: dict[str, str] = {"man": "men", "woman": "women", "child": "children", "person": "people",
                              "mouse": "mice", "knife": "knives", "sheep": "sheep", "skis": "skis",
                              "scissors": "scissors", "kid": "kids", "lady": "ladies"}


def plural(word: str) -> str:
    """English plural of one word: irregulars, then -es after s/x/z/ch/sh, -ies after a consonant + y, else -s."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


class ObjectVocabulary:
    """Phrase (a tuple of words) -> category name, for a set of category names."""

    def __init__(self, categories: Iterable[str], synonyms: Mapping[str, tuple[str, ...]] = SYNONYMS) -> None:
        self.categories = tuple(dict.fromkeys(categories))
        self.phrases: dict[tuple[str, ...], str] = {}
        for name in self.categories:
            for form in (name, *synonyms.get(name, ())):
                ws = words(form)
                if not ws:
                    continue
                self.phrases.setdefault(tuple(ws), name)  # a category's own name outranks another's synonym
                self.phrases.setdefault((*ws[:-1], plural(ws[-1])), name)
        self.longest = max((len(p) for p in self.phrases), default=0)

    def mentions(self, text: str) -> list[str]:
        """Category names mentioned in `text`, in order, once per mention (greedy longest match)."""
        ws = words(text)
        found, i = [], 0
        while i < len(ws):
            for n in range(min(self.longest, len(ws) - i), 0, -1):
                name = self.phrases.get(tuple(ws[i:i + n]))
                if name is not None:
                    found.append(name)
                    i += n
                    break
            else:
                i += 1
        return found


def score_chair(predictions: Mapping[str, str], present: Mapping[str, Iterable[str]],
                vocabulary: ObjectVocabulary) -> dict[str, object]:
    """CHAIR_s = share of descriptions naming an absent object; CHAIR_i = share of object mentions that are absent;
    recall = share of present objects (per image, distinct) that are mentioned. All x100, 2 decimals."""
    missing = [k for k in present if k not in predictions]
    if missing or not present:
        raise ValueError(f"{len(missing)} image(s) have no description, e.g. {missing[:5]}" if missing
                         else "no images to score")
    hallucinating = mentions = hallucinated = present_total = recalled = 0
    per_image: dict[str, dict[str, list[str]]] = {}
    for key, objects in present.items():
        truth = set(objects)
        named = vocabulary.mentions(predictions[key])
        wrong = [n for n in named if n not in truth]
        mentions += len(named)
        hallucinated += len(wrong)
        hallucinating += bool(wrong)
        present_total += len(truth)
        recalled += len(truth & set(named))
        if wrong:
            per_image[key] = {"hallucinated": sorted(set(wrong)), "missed": sorted(truth - set(named))}
    n = len(present)
    return {
        "CHAIR_s": round(100 * hallucinating / n, 2),
        "CHAIR_i": round(100 * hallucinated / mentions, 2) if mentions else 0.0,
        "recall": round(100 * recalled / present_total, 2) if present_total else 0.0,
        "mentions": mentions, "hallucinated_mentions": hallucinated, "objects_present": present_total,
        "objects_recalled": recalled, "n": n, "hallucinations": per_image,
    }
