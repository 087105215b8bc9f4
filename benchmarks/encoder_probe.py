"""What a text encoder's token features carry: can a linear probe read a noun's colour from the
noun's own token? The mechanism the text-encoder ablation is about: cross-attention reads bound
attributes from the tokens, so an encoder whose noun tokens carry their own adjective (and not the
other object's) gives the diffusion model binding for free.

On CompShapes colour prompts ("a red circle and a blue square"): the feature of each noun's token
(CLIP: the noun's BPE token; T5 over bytes: the noun's last byte), a multinomial logistic-regression
probe fitted on the training colour prompts and scored on the held-out colour prompts, for
  own colour:        the noun's own colour from its last token (chance 0.2);
  other colour:      the other object's colour read from this noun (how much it leaks);
  (word mean):       the same from the mean of the noun's tokens (a byte-level T5 spreads a word
                     over its bytes; for a one-token BPE noun it is the same token);
  pooled, 1st / 2nd: each object's colour from the pooled vector (adaLN's view of the prompt).
95% CIs: Wilson intervals over the held-out nouns (eval.stats.wilson).

What is held out: every held-out prompt contains at least one colour-shape pair that CompShapes never
trains on, but its *other* noun may carry a pair the probe's training prompts do show. Each noun
score is therefore reported three ways: over all held-out nouns, over the nouns whose (colour, shape)
pair appears in a training prompt ("seen pair"), and over the nouns whose pair no training prompt
shows ("unseen pair": the test of binding a colour to a shape it was never fitted on).

    python benchmarks/encoder_probe.py --store runs/encoders [--markdown]

Encoders: the trained tiny CLIP and T5 of the embedded recipes (gentron.text.pretrain, trained into
--store if missing) and, for contrast, the random `tiny_clip` / `tiny_t5` stand-ins.
"""
from __future__ import annotations

import argparse
import json

import torch

from eval.stats import wilson
from gentron.data import compshapes
from gentron.text import build_text_encoder
from gentron.text.pretrain import encoder_spec, ensure_trained, load_recipe


def noun_spans(encoder, prompt: str) -> list[tuple[int, int]]:
    """[start, end) token indices of each noun (shape word) of a two-object prompt."""
    words = prompt.split(" ")
    out = []
    for i in [i for i, w in enumerate(words) if w in compshapes.SHAPES]:
        before, upto = " ".join(words[:i]) + " ", " ".join(words[: i + 1])
        if hasattr(encoder, "token_embedding"):  # open_clip: [SOT] + BPE tokens
            out.append((len(encoder.tokenizer.encode(before)) + 1, len(encoder.tokenizer.encode(upto)) + 1))
        else:  # ByT5: one token per byte, no start token
            out.append((len(before.encode("utf-8")), len(upto.encode("utf-8"))))
    return out


def colour_prompts(split: str) -> list[tuple[str, list[str]]]:
    rows = []
    for prompt in compshapes.prompts("color", split):
        spec = compshapes.parse_prompt(prompt)
        rows.append((prompt, [ph.color for ph in spec.phrases]))
    return rows


def noun_pairs(rows) -> list[tuple[str, str]]:
    """(colour, shape) of each noun of each two-object prompt, in the order `features` stacks them."""
    pairs = []
    for prompt, cols in rows:
        shapes = [w for w in prompt.split(" ") if w in compshapes.SHAPES]
        pairs += [(cols[k], shapes[k]) for k in range(2)]
    return pairs


def seen_mask(train_rows, test_rows) -> torch.Tensor:
    """True for each held-out noun whose (colour, shape) pair some training prompt shows."""
    seen = set(noun_pairs(train_rows))
    return torch.tensor([pair in seen for pair in noun_pairs(test_rows)])


def features(encoder, rows, reduce: str = "last"):
    """reduce: the noun's feature is its last token ('last') or the mean of its tokens ('mean'; the
    same for a one-token BPE noun, the word's bytes for a byte-level T5)."""
    colours = list(compshapes.COLORS)
    own, pooled, own_y, other_y, first_y, second_y = [], [], [], [], [], []
    for start in range(0, len(rows), 64):
        chunk = rows[start:start + 64]
        emb = encoder.encode([p for p, _ in chunk])
        for b, (prompt, cols) in enumerate(chunk):
            spans = noun_spans(encoder, prompt)
            for k in range(2):
                start, end = spans[k]
                own.append(emb.tokens[b, end - 1] if reduce == "last" else emb.tokens[b, start:end].mean(0))
                own_y.append(colours.index(cols[k]))
                other_y.append(colours.index(cols[1 - k]))
            pooled.append(emb.pooled[b])
            first_y.append(colours.index(cols[0]))
            second_y.append(colours.index(cols[1]))
    t = lambda v: torch.tensor(v)
    return (torch.stack(own).float(), t(own_y), t(other_y), torch.stack(pooled).float(), t(first_y), t(second_y))


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int = 5, l2: float = 1e-3):
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    xs = (x - mean) / std
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: ((z - mean) / std @ w + b).argmax(1)


def accuracy(hit: torch.Tensor) -> dict:
    hits, n = int(hit.sum()), len(hit)
    lo, hi = wilson(hits, n) if n else (float("nan"), float("nan"))
    return {"acc": hits / n if n else float("nan"), "ci_low": lo, "ci_high": hi, "n": n}


def score(train_x, train_y, test_x, test_y, subsets: dict | None = None) -> dict:
    """Accuracy over every test row, and over each named subset (a boolean mask over the rows)."""
    probe = fit_probe(train_x, train_y)
    with torch.no_grad():
        hit = probe(test_x) == test_y
    out = accuracy(hit)
    for name, mask in (subsets or {}).items():
        out[name] = accuracy(hit[mask])
    return out


def probe_encoder(encoder) -> dict:
    train_rows, test_rows = colour_prompts("train"), colour_prompts("test")
    tr, te = features(encoder, train_rows), features(encoder, test_rows)
    trm, tem = features(encoder, train_rows, "mean"), features(encoder, test_rows, "mean")
    seen = seen_mask(train_rows, test_rows)
    nouns = {"seen pair": seen, "unseen pair": ~seen}
    return {
        "own colour": score(tr[0], tr[1], te[0], te[1], nouns),
        "other colour": score(tr[0], tr[2], te[0], te[2], nouns),
        "own colour (word mean)": score(trm[0], trm[1], tem[0], tem[1], nouns),
        "other colour (word mean)": score(trm[0], trm[2], tem[0], tem[2], nouns),
        "pooled, 1st": score(tr[3], tr[4], te[3], te[4]),
        "pooled, 2nd": score(tr[3], tr[5], te[3], te[5]),
    }


def cell(r: dict) -> str:
    return f"{r['acc']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="runs/encoders", help="folder of trained encoders")
    parser.add_argument("--seed", type=int, default=0, help="the trained encoders' recipe seed")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.manual_seed(0)
    encoders = {}
    for label, objective in (("tiny CLIP, contrastive", "clip_contrastive"), ("tiny T5, span corruption", "t5_span")):
        recipe = load_recipe({"objective": objective, "seed": args.seed})
        ensure_trained(recipe, args.store)
        encoders[label] = build_text_encoder(encoder_spec(recipe, args.store))
    encoders["tiny_clip (random, window 2)"] = build_text_encoder({"kind": "tiny_clip", "seed": 0})
    encoders["tiny_t5 (random)"] = build_text_encoder({"kind": "tiny_t5", "seed": 0})
    results = {label: probe_encoder(enc) for label, enc in encoders.items()}
    first = next(iter(results.values()))
    columns = [(name, None) for name in first] + [(name, subset) for name in first
                                                  for subset in ("seen pair", "unseen pair") if subset in first[name]]
    print("held-out colour prompts; linear probe accuracy [95% CI]; chance 0.20")
    print("| encoder | " + " | ".join(f"{n}, {s} nouns" if s else n for n, s in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, row in results.items():
        print(f"| {label} | " + " | ".join(cell(row[n][s] if s else row[n]) for n, s in columns) + " |")
    own = first["own colour"]
    print(f"(n = {own['n']} held-out nouns: {own['seen pair']['n']} with a pair the probe's training prompts "
          f"show, {own['unseen pair']['n']} with a pair none shows; {first['pooled, 1st']['n']} prompts)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
