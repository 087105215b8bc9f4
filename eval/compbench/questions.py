"""From a prompt to what T2I-CompBench asks of its images: noun chunks (BLIP-VQA questions), first and
last nouns (detector queries), the spatial relation, and the prompt without adjectives (complex/CLIP).

The reference code uses spaCy's en_core_web_sm. It is used here when installed; otherwise a documented
deterministic fallback tags words with a small lexicon plus suffix rules:
- determiners/numbers/possessives (DET), prepositions, conjunctions, pronouns, auxiliaries and common verbs,
  -ing words (VERB unless a known -ing noun), -ly adverbs and "very"-type intensifiers (ADV);
- adjectives: colours, shapes, sizes, textures and materials, and -ed/-en/-ful/-ous/-ic/-al/-ive/-ish/
  -less/-y/-ar words (e.g. "striped", "wooden", "fluffy", "rectangular") unless a known noun;
- everything else is a NOUN.
A noun chunk is an optional determiner, then modifiers (ADJ, ADV, NOUN), ending at the last NOUN of an
unbroken run; pronouns are not chunks (spaCy would return them). On real-style prompts this matches
spaCy, e.g. "a green bench and a red car" -> ["a green bench", "a red car"] and "a girl on the left of
a bicycle" -> ["a girl", "the left", "a bicycle"].
"""
from __future__ import annotations

import functools
import logging
import re

log = logging.getLogger(__name__)

SKIP_CHUNKS = ("top", "the side", "the left", "the right")
MAX_QUESTIONS = 8
PERSON_WORDS = ("girl", "boy", "man", "woman")
# In the order the reference code tries them.
SPATIAL_RELATIONS = ("on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of",
                     "on the top of")

_DET = set("a an the this that these those some any each every another either neither no my your his her its our "
           "their one two three four five six seven eight nine ten several many few both all".split())
_FUNCTION = set("on in of to at by with without from for into onto over under above below behind beside besides "
                "between near next across against along around through towards toward inside outside upon off "
                "out up down as like than and or but nor while whereas so yet then also not".split())
_PRON = set("it its it's they them he him she we us you i me who which what whose whom itself themselves".split())
_VERB = set("is are was were be been being am has have had do does did can could will would shall should may might "
            "must sits sit sat stands stand stood holds hold held lies lie lay looks look rests rest hangs hang "
            "plays play eats eat rides ride runs run walks walk jumps jump flies fly swims swim sleeps sleep "
            "wears wear carries carry placed put leans lean reads read drinks drink contains contain".split())
_ADV = set("very quite rather really extremely slightly too so".split())
_ADJ = set("red green blue yellow brown black white pink purple orange gray grey gold golden silver beige violet "
           "cyan magenta turquoise navy maroon round square rectangular triangular oval circular cylindrical "
           "spherical cubic conical hexagonal octagonal pentagonal diamond big small large tiny tall short long "
           "huge little wide narrow thin thick flat curved straight heart-shaped star-shaped wooden metallic "
           "plastic glass leather fluffy furry fuzzy rubber fabric velvet silky smooth rough soft hard shiny "
           "glossy matte striped spotted knitted woolen woollen ceramic marble stone concrete paper cotton denim "
           "old new young modern ancient bright dark light colorful colourful transparent".split())
_NOUN = set("ceiling building painting ring king wedding morning evening thing string wing swing clothing "
            "pudding stuffing frosting icing railing awning sibling duckling dumpling bedding bowl pencil table "
            "animal crystal pedal petal metal jewel towel shovel barrel kennel tunnel camel panel vessel "
            "bed sled shed toy key monkey donkey turkey trolley jersey valley pony puppy lady baby city candy "
            "teddy body party daisy lily berry cherry strawberry ferry lorry jelly belly family butterfly fly "
            "guitar car star jar bar chair hair stair pillar collar sugar cigar radar scholar".split())
_ADJ_SUFFIXES = ("ed", "en", "ful", "ous", "ic", "al", "ive", "ish", "less", "y", "ar")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*|[^\sA-Za-z0-9]")


def _fallback_tag(word: str) -> str:
    w = word.lower()
    if not w[0].isalnum():
        return "PUNCT"
    for tag, words in (("DET", _DET), ("ADP", _FUNCTION), ("PRON", _PRON), ("VERB", _VERB), ("ADV", _ADV),
                       ("ADJ", _ADJ), ("NOUN", _NOUN)):
        if w in words:
            return tag
    if w.isdigit():
        return "DET"
    if w.endswith("ing"):
        return "VERB"
    if w.endswith("ly"):
        return "ADV"
    if w.endswith(_ADJ_SUFFIXES) and len(w) > 4:
        return "ADJ"
    return "NOUN"


@functools.lru_cache(maxsize=1)
def _spacy():
    try:
        import spacy

        return spacy.load("en_core_web_sm")
    except (ImportError, OSError):
        log.warning("spaCy en_core_web_sm not available: using the deterministic fallback noun chunker "
                    "(see eval/compbench/questions.py)")
        return None


def spacy_available() -> bool:
    return _spacy() is not None


def tag(prompt: str) -> list[tuple[str, str]]:
    """(word, coarse POS) pairs: spaCy's when available, else the fallback tagger's."""
    nlp = _spacy()
    if nlp is not None:
        return [(t.text, t.pos_) for t in nlp(prompt)]
    return [(w, _fallback_tag(w)) for w in _WORD.findall(prompt)]


def _fallback_chunks(tagged: list[tuple[str, str]]) -> list[str]:
    chunks, current, det = [], [], []

    def close():
        last_noun = max((i for i, (_, t) in enumerate(current) if t == "NOUN"), default=None)
        if last_noun is not None:
            chunks.append(" ".join(w for w, _ in det + current[:last_noun + 1]))

    for word, pos in tagged:
        if pos in ("ADJ", "ADV", "NOUN"):
            current.append((word, pos))
            continue
        close()
        current, det = [], ([(word, pos)] if pos == "DET" else [])
    close()
    return chunks


def noun_chunks(prompt: str) -> list[str]:
    nlp = _spacy()
    if nlp is not None:
        return [chunk.text for chunk in nlp(prompt).noun_chunks]
    return _fallback_chunks(tag(prompt))


def vqa_questions(prompt: str) -> list[str]:
    """BLIP-VQA questions: noun chunks minus 'top', 'the side', 'the left', 'the right', at most 8, + '?'."""
    return [f"{chunk}?" for chunk in noun_chunks(prompt) if chunk not in SKIP_CHUNKS][:MAX_QUESTIONS]


def nouns(text: str) -> list[str]:
    return [word for word, pos in tag(text) if pos == "NOUN"]


def _detector_label(noun: str) -> str:
    return "person" if noun.lower() in PERSON_WORDS else noun


def spatial_relation(prompt: str) -> str | None:
    return next((rel for rel in SPATIAL_RELATIONS if rel in prompt), None)


def spatial_objects(prompt: str, around_relation: bool = False) -> tuple[str, str] | None:
    """The two objects to detect: the first and last noun (girl/boy/man/woman -> person); for complex
    prompts (`around_relation`) the last noun before the relation and the first noun after it."""
    relation = spatial_relation(prompt)
    if around_relation and relation is not None:
        before, after = prompt.split(relation, 1)
        left, right = nouns(before), nouns(after)
        if not left or not right:
            return None
        return _detector_label(left[-1]), _detector_label(right[0])
    found = nouns(prompt)
    if not found:
        return None
    return _detector_label(found[0]), _detector_label(found[-1])


def strip_adjectives(prompt: str) -> str:
    """The prompt's words without adjectives, space-joined (the reference code's complex/CLIP text)."""
    return " ".join(word for word, pos in tag(prompt) if pos != "ADJ")
