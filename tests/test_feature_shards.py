"""Encode once, train many times: the encode stage writes VAE latents and every encoder's text
features into one shard per array task, and training streams them with no encoder and no VAE."""
from __future__ import annotations

import json
import os

import pytest
import torch

from gentron import distributed as D
from gentron.data.encode import encode_shards, main
from gentron.data.training import build_training_data, needs_encoders, needs_vae
from gentron.text import build_text_encoders
from tests.support.train_fixtures import state_equal, tiny_config, with_changes

ENCODERS = [{"kind": "tiny_t5", "seed": 0, "width": 32, "layers": 1, "heads": 2},
            {"kind": "tiny_clip", "seed": 0, "width": 32, "layers": 1, "heads": 2}]


def _cell(tmp_path, **data):
    return tiny_config(tmp_path, text_encoders=ENCODERS,
                       data={"encode": "shards", "features_dir": str(tmp_path / "features"), "num_workers": 2,
                             "shuffle_buffer": 8, **data},
                       train={"steps": 3, "caption_dropout": 0.0})


def _encode(cfg, tmp_path, shards=3):
    return [encode_shards(cfg, tmp_path / "features", i, shards) for i in range(shards)]


def _index(tmp_path) -> dict:
    return json.loads((tmp_path / "features/index.json").read_text())


def test_one_shard_per_task_with_an_index_skipped_when_complete_and_resumable(tmp_path, monkeypatch):
    cfg = _cell(tmp_path)
    paths = _encode(cfg, tmp_path)
    assert [p.name for p in paths] == [f"features-{i:06d}.pt" for i in range(3)]
    index = _index(tmp_path)
    assert index["num_shards"] == 3 and index["media"] == "image" and index["empty_prompt"] == "empty-prompt.pt"
    assert index["data"]["num_train"] == 64 and len(index["data_key"]) == 12
    assert index["vae"] == {"spec": index["vae"]["spec"], "channels": 3, "downsample": 1}
    assert index["vae"]["spec"]["kind"] == "identity" and "batch_size" not in index["vae"]["spec"]
    encoders = build_text_encoders(cfg.text_encoders)
    assert [e["name"] for e in index["text_encoders"]] == [e.name for e in encoders]
    assert [e["dtype"] for e in index["text_encoders"]] == ["bfloat16", "float32"]  # T5 in bf16, CLIP as given
    assert [(e["width"], e["tokens"]) for e in index["text_encoders"]] == [(32, 128), (32, 77)]
    counts = {name: entry["samples"] for name, entry in index["shards"].items()}
    assert sum(counts.values()) == 64 and all(counts.values())
    shard = torch.load(paths[1], weights_only=True)
    n = shard["samples"]
    assert shard["latents"].shape == (n, 3, 16, 16) and len(shard["captions"]) == n
    for text, dtype in zip(shard["text"], (torch.bfloat16, torch.float32)):
        assert text["tokens"].dtype == text["pooled"].dtype == dtype
        assert text["tokens"].shape == (int(text["lengths"].sum()), 32) and text["pooled"].shape == (n, 32)

    # A complete shard is skipped without building an encoder or the VAE: not rewritten.
    stamps = [p.stat().st_mtime_ns for p in paths]
    monkeypatch.setattr("gentron.data.encode.build_text_encoders", lambda *a: pytest.fail("encoders built"))
    monkeypatch.setattr("gentron.data.encode.build_vae", lambda *a: pytest.fail("VAE built"))
    assert _encode(cfg, tmp_path) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    monkeypatch.undo()

    # A task killed while writing shard 1 left its temporary and no shard: the rerun array writes
    # shard 1 only and removes the temporary.
    stale = tmp_path / "features" / f".{paths[1].name}.x1y2z3.tmp"
    stale.write_bytes(b"half a shard")
    paths[1].unlink()
    _encode(cfg, tmp_path)
    assert not stale.exists() and paths[1].exists()
    assert [p.stat().st_mtime_ns for p in (paths[0], paths[2])] == [stamps[0], stamps[2]]
    assert _index(tmp_path)["shards"] == index["shards"] | {paths[1].name: _index(tmp_path)["shards"][paths[1].name]}

    # A task killed after writing shard 2 but before the index recorded it: recorded, not rewritten.
    edited = _index(tmp_path)
    del edited["shards"][paths[2].name]
    (tmp_path / "features/index.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=r"1 of 3 shards are not encoded yet \(e.g. features-000002.pt\)"):
        build_training_data(cfg, D.DistInfo(), "cpu", torch.float32, None, None, tmp_path / "cache", None)
    encode_shards(cfg, tmp_path / "features", 2, 3)
    assert paths[2].stat().st_mtime_ns == stamps[2] and paths[2].name in _index(tmp_path)["shards"]


def test_array_task_defaults_come_from_slurm(tmp_path, monkeypatch, capsys):
    import yaml

    from gentron.config import to_dict

    cfg = _cell(tmp_path)
    (tmp_path / "cell.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    main([str(tmp_path / "cell.yaml")])  # --out: the config's data.features_dir
    assert capsys.readouterr().out.strip().endswith("features-000001.pt")
    assert _index(tmp_path)["num_shards"] == 2 and list(_index(tmp_path)["shards"]) == ["features-000001.pt"]


def _first_batch(cfg, tmp_path, seed=0):
    """The first batch a training run draws from the shards, built with no encoder and no VAE."""
    assert not needs_encoders(cfg) and not needs_vae(cfg)
    data = build_training_data(cfg, D.DistInfo(), "cpu", torch.float32, None, None, tmp_path / "cache", None)
    try:
        return data, data.next_batch(torch.Generator().manual_seed(seed))
    finally:
        data.close()


def _reference(cfg, tmp_path, latents: torch.Tensor):
    """What the encoders give for the captions of these latents, encoded as the encode stage batched
    them (a shard of <= 64 samples in one call: encoder outputs depend on the batch in the last bits)."""
    encoders = build_text_encoders(cfg.text_encoders)
    rows = []
    for path in sorted((tmp_path / "features").glob("features-*.pt")):
        shard = torch.load(path, weights_only=True)
        embs = [e.encode(shard["captions"]) for e in encoders]
        rows += [(z, [emb[j] for emb in embs]) for j, z in enumerate(shard["latents"])]
    found = [next(text for z, text in rows if torch.equal(z, x)) for x in latents]
    return encoders, found


def test_first_batch_text_features_equal_the_encoders_and_no_encoder_is_built(tmp_path):
    cfg = _cell(tmp_path)
    _encode(cfg, tmp_path)
    data, (x0, text, motion_free) = _first_batch(cfg, tmp_path)
    assert motion_free is None and x0.shape == (8, 3, 16, 16) and x0.dtype == torch.float32
    assert data.encoders == [] and data.vae is None
    encoders, expected = _reference(cfg, tmp_path, x0)
    assert data.encoder_names == [e.name for e in encoders]
    assert data.shapes == [e.shape for e in encoders] and data.latent == (3, 1)
    for i, (emb, stored_dtype) in enumerate(zip(text, (torch.bfloat16, torch.float32))):
        lengths = [int(rows[i].mask.sum()) for rows in expected]
        assert emb.tokens.dtype == emb.pooled.dtype == torch.float32  # met the model's dtype
        assert emb.tokens.shape == (8, max(lengths), 32)  # padded to this batch's longest prompt
        assert emb.mask.sum(1).tolist() == lengths and not emb.tokens[~emb.mask].any()
        for j, rows in enumerate(expected):
            ref = rows[i]
            tokens, pooled = ref.tokens[:lengths[j]], ref.pooled
            if stored_dtype == torch.float32:  # tiny_clip: bit-equal
                assert torch.equal(emb.tokens[j, :lengths[j]], tokens) and torch.equal(emb.pooled[j], pooled)
            else:  # tiny_t5: stored in bfloat16, exactly the encoder's output rounded to it
                assert torch.equal(emb.tokens[j, :lengths[j]], tokens.bfloat16().float())
                assert torch.equal(emb.pooled[j], pooled.bfloat16().float())
                torch.testing.assert_close(emb.tokens[j, :lengths[j]], tokens, rtol=2 ** -8, atol=1e-6)


def test_a_dropped_caption_takes_the_stored_empty_prompt(tmp_path):
    cfg = with_changes(_cell(tmp_path), train={"caption_dropout": 0.5})
    _encode(cfg, tmp_path)
    _, (x0, text, _) = _first_batch(cfg, tmp_path, seed=0)
    keep = torch.rand(8, generator=torch.Generator().manual_seed(0)) >= 0.5  # the step's dropout draw
    assert 0 < int(keep.sum()) < 8
    encoders, expected = _reference(cfg, tmp_path, x0)
    for i, (encoder, emb) in enumerate(zip(encoders, text)):
        empty = encoder.encode([""])[0]
        rounded = (lambda t: t.bfloat16().float()) if i == 0 else (lambda t: t)
        lengths = [int(empty.mask.sum()) if not k else int(rows[i].mask.sum()) for k, rows in zip(keep, expected)]
        assert emb.mask.sum(1).tolist() == lengths and emb.tokens.shape[1] == max(lengths)
        for j in range(8):
            ref = expected[j][i] if keep[j] else empty
            assert torch.equal(emb.tokens[j, :lengths[j]], rounded(ref.tokens[:lengths[j]]))
            assert torch.equal(emb.pooled[j], rounded(ref.pooled))
            assert not emb.tokens[j, lengths[j]:].any()


def test_a_set_of_two_encoders_serves_a_cell_of_either_or_both(tmp_path):
    """The text_encoder grid's arms (CLIP, T5, both) share one encode pass."""
    both = _cell(tmp_path)
    _encode(both, tmp_path)
    _, (x0, text, _) = _first_batch(both, tmp_path)
    for encoders, picked in (([ENCODERS[1]], [1]), ([ENCODERS[1], ENCODERS[0]], [1, 0])):
        arm = tiny_config(tmp_path, text_encoders=encoders, train={"caption_dropout": 0.0},
                          data={"encode": "shards", "num_workers": 2, "features_dir": str(tmp_path / "features"),
                                "shuffle_buffer": 8})
        data, (y0, arm_text, _) = _first_batch(arm, tmp_path)
        assert torch.equal(x0, y0)
        assert data.encoder_names == [_index(tmp_path)["text_encoders"][j]["name"] for j in picked]
        for emb, j in zip(arm_text, picked):
            assert torch.equal(emb.tokens, text[j].tokens) and torch.equal(emb.pooled, text[j].pooled)
    alone = tiny_config(tmp_path, text_encoders=[{**ENCODERS[1], "seed": 5}],
                        data={"encode": "shards", "features_dir": str(tmp_path / "features")})
    with pytest.raises(ValueError, match=r"text encoder 0 \(tiny_clip\) of this cell is not among the 2 there"):
        build_training_data(alone, D.DistInfo(), "cpu", torch.float32, None, None, tmp_path / "cache", None)


def test_training_from_shards_and_shards_of_another_encoding_are_refused(tmp_path):
    from gentron.checkpoint import load_checkpoint
    from gentron.train import train

    cfg = _cell(tmp_path)
    _encode(cfg, tmp_path)
    state = load_checkpoint(train(cfg, tmp_path / "run").checkpoint)
    assert state["step"] == 3 and state["data"]["images"] == 24
    assert state["data"]["skipped"] == {"skipped": [0], "skipped_shards": [0]}
    assert list(state["model_config"]["text_widths"]) == [32, 32]
    train(with_changes(cfg, train={"steps": 2}), tmp_path / "resumed")  # stopped mid-epoch, then resumed
    resumed = load_checkpoint(train(cfg, tmp_path / "resumed").checkpoint)
    assert all(state_equal(state[k], resumed[k]) for k in ("model", "ema", "data"))

    other = tiny_config(tmp_path, text_encoders=[{**ENCODERS[0], "seed": 1}, ENCODERS[1]],
                        data={"encode": "shards", "features_dir": str(tmp_path / "features")})
    with pytest.raises(ValueError) as refused:
        build_training_data(other, D.DistInfo(), "cpu", torch.float32, None, None, tmp_path / "cache", None)
    message = str(refused.value)
    assert "\n" not in message and "was encoded for another cell" in message
    assert "text_encoders[0].seed is 0 there, 1 here" in message and "python -m gentron.data.encode" in message
    with pytest.raises(ValueError, match=r"holds feature shards of another encoding \(text_encoders\[0\].seed"):
        encode_shards(other, tmp_path / "features", 0, 3)  # nor is another encoding added to the set

    index = _index(tmp_path)
    index["vae"]["spec"] = {**index["vae"]["spec"], "kind": "autoencoder_kl", "path": "stabilityai/sd-vae-ft-ema"}
    (tmp_path / "features/index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"^[^\n]*vae.kind is \"autoencoder_kl\" there, \"identity\" here[^\n]*$"):
        build_training_data(cfg, D.DistInfo(), "cpu", torch.float32, None, None, tmp_path / "cache", None)


def test_video_clips_train_from_shards(tmp_path):
    from gentron.checkpoint import load_checkpoint
    from gentron.train import train

    cfg = with_changes(_cell(tmp_path, video=True, num_train=16, num_workers=1),
                       train={"steps": 2, "p_motion_free": 0.5})
    _encode(cfg, tmp_path, shards=2)
    assert _index(tmp_path)["media"] == "video"
    shard = torch.load(tmp_path / "features/features-000000.pt", weights_only=True)
    assert shard["latents"].shape[1:] == (4, 3, 16, 16)
    state = load_checkpoint(train(cfg, tmp_path / "run").checkpoint)
    assert state["data"]["images"] + state["data"]["clips"] == 16 and list(state["data"]["streams"]) == ["clips"]


def test_older_feature_folders_are_refused_with_the_command(tmp_path):
    (tmp_path / "features").mkdir()
    torch.save({"latents": torch.zeros(1, 3, 16, 16), "captions": ["x"]}, tmp_path / "features/features-000000.pt")
    with pytest.raises(FileNotFoundError, match="no index.json .*older layout.*python -m gentron.data.encode"):
        build_training_data(_cell(tmp_path), D.DistInfo(), "cpu", torch.float32, None, None, tmp_path / "c", None)
    assert os.path.exists(tmp_path / "features/features-000000.pt")
