"""The blind study stays blind: served images are re-encoded from pixels only (no ICC profile, no
transparency chunk, no text, comments or EXIF), every stimulus of a study in one format (one size, frame
count, timing and byte length: a classifier on what the browser receives cannot tell the systems apart),
16-bit and float pixels are shown faithfully or refused, images are served only through a valid rater
link, and a bad image is refused when the study is created."""
from __future__ import annotations

import io
import itertools
import json
import re
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageSequence, PngImagePlugin
from starlette.testclient import TestClient

from reports import study, votes
from reports.voteapp import create_app
from tests.support.report_fixtures import draw, prompts

ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
MARK = "system-identity-mark"


def png_chunks(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        chunks.append(kind.decode())
        at += 12 + length
    return chunks


def write_folder(folder: Path, plist: list[dict], save) -> None:
    """A sample folder whose images are written by `save(image, path_without_suffix) -> file name`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in plist:
        name = save(draw(p, 42, 0.8), folder / f"{p['prompt_id']:06d}_42")
        rows.append({"file": name, "prompt": p["prompt"], "seed": 42, "index": 0, "category": p["category"],
                     "prompt_id": p["prompt_id"]})
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def save_tagged_png(image: Image.Image, stem: Path) -> str:
    """A PNG carrying every side channel: ICC profile, tRNS transparency, a text chunk and EXIF."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", MARK)
    exif = Image.Exif()
    exif[0x010E] = MARK  # ImageDescription
    image.save(stem.with_suffix(".png"), icc_profile=ICC, transparency=(245, 245, 240), pnginfo=info, exif=exif)
    return stem.with_suffix(".png").name


def save_small_jpeg(image: Image.Image, stem: Path) -> str:
    """Another system: a JPEG at a smaller size with its own ICC profile and EXIF."""
    exif = Image.Exif()
    exif[0x0131] = MARK  # Software
    image.resize((48, 48)).save(stem.with_suffix(".jpg"), quality=90, icc_profile=ICC, exif=exif)
    return stem.with_suffix(".jpg").name


def save_commented_gif(image: Image.Image, stem: Path) -> str:
    frames = [image, image.rotate(90)]
    frames[0].save(stem.with_suffix(".gif"), save_all=True, append_images=frames[1:], duration=120, loop=0,
                   comment=MARK.encode())
    return stem.with_suffix(".gif").name


def screen_images(client: TestClient, token: str) -> list[str]:
    return re.findall(r"<img[^>]* src='([^']+)'", client.get(f"/r/{token}").text)


@pytest.fixture
def leaky(tmp_path):
    plist = prompts(3)
    write_folder(tmp_path / "png", plist, save_tagged_png)
    write_folder(tmp_path / "jpg", plist, save_small_jpeg)
    db = tmp_path / "votes.sqlite"
    created = study.create(db, "leaky", {"png": tmp_path / "png", "jpg": tmp_path / "jpg"}, raters=2, checks=0)
    return {"db": db, **created}


def test_served_images_carry_pixels_only_in_one_format_and_size(leaky):
    client = TestClient(create_app(leaky["db"]))
    token = leaky["raters"][0]
    for _ in range(3):
        urls = screen_images(client, token)
        assert len(urls) == 2
        served = [client.get(url) for url in urls]
        assert all(r.status_code == 200 for r in served), [r.text for r in served]
        assert {r.headers["content-type"] for r in served} == {"image/png"}
        for response in served:
            assert png_chunks(response.content) == ["IHDR", "IDAT", "IEND"], "no iCCP, tRNS, tEXt or eXIf"
            assert MARK.encode() not in response.content
        decoded = [Image.open(io.BytesIO(r.content)) for r in served]
        assert {im.size for im in decoded} == {(64, 64)}, "both images of a pair at the same size"
        assert {im.mode for im in decoded} == {"RGB"}
        form = re.search(r"name='nonce' value='([^']+)'.*name='signature' value='([^']+)'",
                         client.get(f"/r/{token}").text, re.S)
        client.post(f"/r/{token}/vote",
                    data={"nonce": form[1], "signature": form[2], "quality": "left", "text": "left"})


def test_gif_comments_are_dropped_and_both_sides_are_clips_of_one_format(tmp_path):
    plist = prompts(2)
    write_folder(tmp_path / "gif", plist, save_commented_gif)
    write_folder(tmp_path / "png", plist, save_tagged_png)
    db = tmp_path / "votes.sqlite"
    created = study.create(db, "gifs", {"gif": tmp_path / "gif", "png": tmp_path / "png"}, raters=1, checks=0)
    client = TestClient(create_app(db))
    served = [client.get(url) for url in screen_images(client, created["raters"][0])]
    assert {r.headers["content-type"] for r in served} == {"image/png"}, "clips are APNGs"
    assert len({len(r.content) for r in served}) == 1
    for response in served:
        assert MARK.encode() not in response.content
        image = Image.open(io.BytesIO(response.content))
        assert "comment" not in image.info and "icc_profile" not in image.info and "transparency" not in image.info
        assert image.size == (64, 64)
        assert image.n_frames == 2, "the still is shown as a clip of the same frame count"
        assert [f.info["duration"] for f in ImageSequence.Iterator(image)] == [120, 120]
        assert image.info["loop"] == 0


def test_images_need_a_valid_rater_token(leaky, tmp_path):
    client = TestClient(create_app(leaky["db"]))
    urls = screen_images(client, leaky["raters"][0])
    image_ids = [re.search(r"/i/([0-9a-f]+)", url).group(1) for url in urls]
    assert all(client.get(url).status_code == 200 for url in urls)
    for image_id in image_ids:
        bare = client.get(f"/i/{image_id}")
        assert bare.status_code in (403, 404) and not bare.headers["content-type"].startswith("image/")
        assert client.get(f"/r/not-a-token/i/{image_id}").status_code == 404
    # a rater of another study cannot fetch this study's images with their own valid token
    plist = prompts(2)
    for name in ("a", "b"):
        write_folder(tmp_path / "other" / name, plist, save_tagged_png)
    other = study.create(leaky["db"], "other", {n: tmp_path / "other" / n for n in ("a", "b")}, raters=1, checks=0)
    assert client.get(f"/r/{other['raters'][0]}/i/{image_ids[0]}").status_code == 404


@pytest.mark.parametrize("damage, words", [(lambda p: p.write_bytes(b""), "empty"),
                                           (lambda p: p.write_bytes(p.read_bytes()[:60]), "not a readable image"),
                                           (lambda p: p.write_bytes(b"GIF89a" + b"\0" * 40), "not a readable image")])
def test_bad_image_is_refused_at_creation_with_its_path(tmp_path, damage, words):
    plist = prompts(3)
    write_folder(tmp_path / "a", plist, save_tagged_png)
    write_folder(tmp_path / "b", plist, save_tagged_png)
    broken = sorted((tmp_path / "b").glob("*.png"))[1]
    damage(broken)
    db = tmp_path / "votes.sqlite"
    with pytest.raises(ValueError, match=words) as caught:
        study.create(db, "broken", {"a": tmp_path / "a", "b": tmp_path / "b"}, raters=2, checks=0)
    assert str(broken) in str(caught.value)
    conn = votes.connect(db)
    votes.init_db(conn)
    assert conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0] == 0, "nothing half-created"
    conn.close()


# ---------------------------------------------------------------- one format per study


def write_system(folder: Path, plist: list[dict], save) -> None:
    """A sample folder whose files are written by `save(prompt, path_without_suffix) -> file name`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"file": save(p, folder / f"{p['prompt_id']:06d}_42"), "prompt": p["prompt"], "seed": 42, "index": 0,
             "category": p["category"], "prompt_id": p["prompt_id"]} for p in plist]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def noisy_rgb(p: dict, width: int = 96, height: int = 64) -> np.ndarray:
    """The prompt drawn with heavy noise (compresses badly), cut to width x height."""
    return np.asarray(draw(p, 42, 0.2, size=max(width, height)))[:height, :width]


def grey_levels(p: dict, size: int) -> np.ndarray:
    """A smooth grey rendering of the prompt in [0, 1] (compresses well)."""
    return np.asarray(draw(p, 42, 1.0, size=size).convert("L"), dtype=np.float64) / 255


def save_rgb8_png(p, stem):
    Image.fromarray(noisy_rgb(p)).save(stem.with_suffix(".png"))
    return stem.with_suffix(".png").name


def save_grey16_png(p, stem):
    Image.fromarray(np.rint(grey_levels(p, 40) * 65535).astype(np.uint16)).save(stem.with_suffix(".png"))
    return stem.with_suffix(".png").name


def save_float_tiff(p, stem):
    Image.fromarray(grey_levels(p, 48).astype(np.float32)).save(stem.with_suffix(".tif"))
    return stem.with_suffix(".tif").name


def save_gif_clip(p, stem):
    """4 noisy 96x64 frames of 150 ms, looping forever."""
    frames = [Image.fromarray(np.roll(noisy_rgb(p), 6 * t, axis=1)) for t in range(4)]
    frames[0].save(stem.with_suffix(".gif"), save_all=True, append_images=frames[1:], duration=150, loop=0)
    return stem.with_suffix(".gif").name


def save_apng_clip(p, stem):
    """9 smooth 40x40 frames of 70 ms, played twice (another format, size, aspect, length and loop flag)."""
    grey = (grey_levels(p, 40) * 255).astype(np.uint8)
    frames = [Image.fromarray(np.roll(grey, t, axis=0)).convert("RGB") for t in range(9)]
    frames[0].save(stem.with_suffix(".png"), save_all=True, append_images=frames[1:], duration=70, loop=1)
    return stem.with_suffix(".png").name


def served_stimuli(db: Path, token: str) -> list[tuple[Path, object]]:
    """(source file, HTTP response) for every image the rater is served, voting through every screen."""
    client = TestClient(create_app(db))
    out = []
    while "All done" not in (page := client.get(f"/r/{token}").text):
        for url in re.findall(r"<img[^>]* src='([^']+)'", page):
            with sqlite3.connect(db) as conn:
                path, = conn.execute("SELECT path FROM images WHERE id = ?", (url.rsplit("/", 1)[1],)).fetchone()
            out.append((Path(path), client.get(url)))
        form = re.search(r"name='nonce' value='([^']+)'.*name='signature' value='([^']+)'", page, re.S)
        client.post(f"/r/{token}/vote", data={"nonce": form[1], "signature": form[2], "quality": "left", "text": "left"})
    return out


def served_features(response) -> dict:
    """Everything a rater's browser can measure about a stimulus without looking at its pixels."""
    image = Image.open(io.BytesIO(response.content))
    durations = [float(f.info.get("duration", 0)) for f in ImageSequence.Iterator(image)]
    return {"bytes": len(response.content), "width": image.width, "height": image.height,
            "aspect": image.width / image.height, "frames": len(durations), "total_ms": sum(durations),
            "durations": tuple(durations), "loop": image.info.get("loop"), "mode": image.mode,
            "chunks": tuple(png_chunks(response.content)), "headers": tuple(sorted(response.headers.items()))}


def native_features(path: Path) -> dict:
    """The same measurements of a source file as it was written."""
    with Image.open(path) as image:
        durations = [float(f.info.get("duration", 0)) for f in ImageSequence.Iterator(image)]
        return {"bytes": path.stat().st_size, "width": image.width, "height": image.height,
                "aspect": image.width / image.height, "frames": len(durations), "total_ms": sum(durations)}


NUMERIC = ("bytes", "width", "height", "aspect", "frames", "total_ms")


def best_threshold_accuracy(rows: list[dict], labels: list[int]) -> float:
    """The accuracy of the best single-feature threshold rule (either direction) over NUMERIC features."""
    labels = np.asarray(labels)
    best = 0.0
    for name in NUMERIC:
        values = np.asarray([r[name] for r in rows], dtype=np.float64)
        for cut in np.unique(values):
            guess = values >= cut
            best = max(best, float(np.mean(guess == labels)), float(np.mean(guess != labels)))
    return best


LEAK_STUDIES = {
    # native resolution, aspect ratio, bit depth, sample format, file format, compressibility and content
    "stills": {"rgb8": save_rgb8_png, "grey16": save_grey16_png, "float": save_float_tiff},
    # ... and frame count, frame timing, total length and loop flag
    "clips": {"gif": save_gif_clip, "apng": save_apng_clip},
}


@pytest.mark.parametrize("kind", LEAK_STUDIES)
def test_nothing_but_pixels_tells_the_systems_apart(tmp_path, kind):
    """Every served stimulus measured as a browser would see it (byte length, headers, chunks, size, frames,
    frame times, loop); a threshold on any feature tells the systems apart perfectly from the source files
    and no better than chance from what is served, because every feature is identical."""
    plist = prompts(6)
    for name, save in LEAK_STUDIES[kind].items():
        write_system(tmp_path / name, plist, save)
    db = tmp_path / "votes.sqlite"
    systems = {name: tmp_path / name for name in LEAK_STUDIES[kind]}
    created = study.create(db, kind, systems, raters=1, checks=1)
    served = served_stimuli(db, created["raters"][0])
    assert len(served) == 2 * (len(plist) * len(list(itertools.combinations(systems, 2))) + 1)
    features = [(path.parent.name, served_features(response)) for path, response in served]
    for key in served_features(served[0][1]):
        assert len({f[key] for _, f in features}) == 1, (key, sorted({(s, f[key]) for s, f in features}))
    assert features[0][1]["bytes"] == created["stimulus"]["payload_bytes"]

    for a, b in itertools.combinations(systems, 2):
        mine = [(s, f) for s, f in features if s in (a, b)]
        labels = [s == a for s, _ in mine]
        chance = max(np.mean(labels), 1 - np.mean(labels))
        assert best_threshold_accuracy([f for _, f in mine], labels) == chance, (a, b)
        sources = sorted({path for path, _ in served if path.parent.name in (a, b)})
        native = best_threshold_accuracy([native_features(p) for p in sources], [p.parent.name == a for p in sources])
        assert native == 1.0, ("the source files do give the systems away", a, b, native)


def test_sixteen_bit_and_float_pixels_are_served_faithfully(tmp_path):
    """A 16-bit grey PNG is scaled by 255/65535 (it used to be served white), a float TIFF in [0, 1] by 255
    (it used to be black); at the study's own size the served pixels are exactly those values."""
    rng = np.random.default_rng(0)
    plist = prompts(2)
    sixteen = {p["prompt_id"]: rng.integers(0, 65536, (32, 32), dtype=np.uint16) for p in plist}
    for levels in sixteen.values():
        levels.flat[:8] = [0, 1, 128, 257, 32767, 32768, 65534, 65535]
    floats = {p["prompt_id"]: rng.random((32, 32), dtype=np.float32) for p in plist}
    for levels in floats.values():
        levels.flat[:4] = [0.0, 1.0, 0.5, 1 / 510]

    def save16(p, stem):
        Image.fromarray(sixteen[p["prompt_id"]]).save(stem.with_suffix(".png"))
        return stem.with_suffix(".png").name

    def save_float(p, stem):
        Image.fromarray(floats[p["prompt_id"]]).save(stem.with_suffix(".tiff"))
        return stem.with_suffix(".tiff").name

    def save8(p, stem):
        Image.fromarray(noisy_rgb(p, 32, 32)).save(stem.with_suffix(".png"))
        return stem.with_suffix(".png").name

    for name, save in {"sixteen": save16, "float": save_float, "rgb": save8}.items():
        write_system(tmp_path / name, plist, save)
    db = tmp_path / "votes.sqlite"
    created = study.create(db, "depth", {n: tmp_path / n for n in ("sixteen", "float", "rgb")}, raters=1, checks=0)
    seen = set()
    for path, response in served_stimuli(db, created["raters"][0]):
        pixels = np.asarray(Image.open(io.BytesIO(response.content)))
        prompt_id = int(path.stem.split("_")[0])
        if path.parent.name == "sixteen":
            expected = np.rint(sixteen[prompt_id] * (255 / 65535)).astype(np.uint8)
        elif path.parent.name == "float":
            expected = np.rint(floats[prompt_id].astype(np.float64) * 255).astype(np.uint8)
        else:
            expected = noisy_rgb(plist[prompt_id], 32, 32)
        expected = np.repeat(expected[..., None], 3, axis=2) if expected.ndim == 2 else expected
        np.testing.assert_array_equal(pixels, expected, err_msg=str(path))
        seen.add(path.parent.name)
    assert seen == {"sixteen", "float", "rgb"}
    assert list(np.rint(np.array([0, 1, 128, 257, 32767, 32768, 65534, 65535]) * 255 / 65535)) == \
        [0, 0, 0, 1, 127, 128, 255, 255]


@pytest.mark.parametrize("values, words", [
    (np.full((16, 16), 1.5, np.float32), "outside [0, 1]"),
    (np.full((16, 16), -0.25, np.float32), "outside [0, 1]"),
    (np.where(np.eye(16, dtype=bool), np.nan, 0.5).astype(np.float32), "NaN"),
    (np.full((16, 16), np.inf, np.float32), "infinite"),
    (np.full((16, 16), 70000, np.int32), "no defined white"),
])
def test_pixels_that_cannot_be_shown_faithfully_are_refused_with_the_path(tmp_path, values, words):
    plist = prompts(2)
    write_system(tmp_path / "ok", plist, save_rgb8_png)

    def save(p, stem):
        Image.fromarray(values).save(stem.with_suffix(".tif"))
        return stem.with_suffix(".tif").name

    write_system(tmp_path / "bad", plist, save)
    db = tmp_path / "votes.sqlite"
    with pytest.raises(ValueError, match=re.escape(words)) as caught:
        study.create(db, "bad", {"ok": tmp_path / "ok", "bad": tmp_path / "bad"}, raters=1, checks=0)
    assert str(tmp_path / "bad") in str(caught.value)
    assert not db.exists()


def test_one_size_per_study_padded_or_cropped_and_recorded(tmp_path):
    plist = prompts(3)
    write_system(tmp_path / "wide", plist, save_rgb8_png)      # 96x64, the largest
    write_system(tmp_path / "square", plist, save_grey16_png)  # 40x40
    folders = {"wide": tmp_path / "wide", "square": tmp_path / "square"}
    db = tmp_path / "votes.sqlite"
    padded = study.create(db, "pad", folders, raters=1, checks=0)
    meta = padded["stimulus"]
    assert (meta["width"], meta["height"], meta["fit"], meta["filter"], meta["frames"]) == (96, 64, "pad", "lanczos", 1)
    assert meta["payload_bytes"] == len(votes.encode_png([np.zeros((64, 96, 3), np.uint8)]))
    conn = votes.connect(db)
    assert votes.study_stimulus(conn, padded["study_id"]) == meta, "recorded with the study"
    conn.close()
    for path, response in served_stimuli(db, padded["raters"][0]):
        pixels = np.asarray(Image.open(io.BytesIO(response.content)))
        assert pixels.shape == (64, 96, 3)
        bars = np.concatenate([pixels[:, :12], pixels[:, -12:]], axis=1)
        assert (np.all(bars == votes.PAD_COLOUR)) == (path.parent.name == "square"), "the 40x40 one is letterboxed"

    cropped = study.create(db, "crop", folders, raters=1, checks=0, size=(48, 48), fit="crop")
    assert (cropped["stimulus"]["width"], cropped["stimulus"]["fit"]) == (48, "crop")
    for path, response in served_stimuli(db, cropped["raters"][0]):
        pixels = np.asarray(Image.open(io.BytesIO(response.content)))
        assert pixels.shape == (48, 48, 3)
        assert not np.all(pixels[:, :4] == votes.PAD_COLOUR), "no bars when cropping"
    client = TestClient(create_app(db))
    client.post(f"/s/{cropped['study_id']}/login", data={"secret": cropped["owner_secret"]})
    page = client.get(f"/s/{cropped['study_id']}/results").text
    assert "Stimuli: 48x48 8-bit sRGB RGB, crop (lanczos), still" in page


def test_clips_are_resampled_to_one_frame_count_and_timing(tmp_path):
    """4 frames of 150 ms (600 ms) and 9 of 70 ms (630 ms) both become 9 frames of round(615 / 9) = 68 ms:
    each output frame is the source frame on screen at the middle of its slot."""
    plist = prompts(2)
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]

    def save_solid_gif(p, stem):
        frames = [Image.new("RGB", (40, 40), c) for c in colours]
        frames[0].save(stem.with_suffix(".gif"), save_all=True, append_images=frames[1:], duration=150, loop=0)
        return stem.with_suffix(".gif").name

    write_system(tmp_path / "four", plist, save_solid_gif)
    write_system(tmp_path / "nine", plist, save_apng_clip)
    db = tmp_path / "votes.sqlite"
    created = study.create(db, "clips", {"four": tmp_path / "four", "nine": tmp_path / "nine"}, raters=1, checks=0)
    meta = created["stimulus"]
    assert (meta["frames"], meta["frame_ms"], meta["loop"], meta["encoding"]) == (9, 68, "forever", "uncompressed APNG")
    for path, response in served_stimuli(db, created["raters"][0]):
        image = Image.open(io.BytesIO(response.content))
        assert (image.n_frames, image.info["loop"]) == (9, 0)
        assert [f.info["duration"] for f in ImageSequence.Iterator(image)] == [68] * 9
        if path.parent.name == "four":
            shown = [tuple(np.asarray(f.convert("RGB"))[20, 20]) for f in ImageSequence.Iterator(image)]
            assert shown == [colours[i] for i in (0, 0, 1, 1, 2, 2, 2, 3, 3)]
    assert votes.resample_frames([100, 300], 4) == [0, 1, 1, 1], "uneven source timing is kept"
    with pytest.raises(ValueError, match="--frames 5: every image of this study is a still"):
        study.stimulus_format([((40, 40), [100.0]), ((64, 64), [100.0])], frames=5)


def test_exif_orientation_is_applied(tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 is served upright, as a viewer shows it."""
    sideways = np.zeros((20, 40, 3), np.uint8)
    sideways[:, :20] = (250, 0, 0)  # red on the left half of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(sideways).save(tmp_path / "turned.jpg", quality=95, exif=exif)
    (frame,), _ = votes.read_image(tmp_path / "turned.jpg")
    assert frame.shape == (40, 20, 3)
    assert frame[5, 10, 0] > 200 and frame[35, 10, 0] < 50, "the stored left half is on top when upright"


def test_an_image_stored_without_data_is_served_from_its_file(tmp_path):
    """Studies created before images were stored in the database keep working (each image in its own format)."""
    plist = prompts(2)
    write_system(tmp_path / "a", plist, save_grey16_png)
    write_system(tmp_path / "b", plist, save_rgb8_png)
    db = tmp_path / "votes.sqlite"
    created = study.create(db, "old", {"a": tmp_path / "a", "b": tmp_path / "b"}, raters=1, checks=0)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE images SET data = NULL, media_type = NULL")
        conn.execute("UPDATE studies SET stimulus = NULL")
    for path, response in served_stimuli(db, created["raters"][0]):
        image = Image.open(io.BytesIO(response.content))
        assert image.size == ((40, 40) if path.parent.name == "a" else (96, 64))
        assert response.headers["content-type"] == "image/png"
        if path.parent.name == "a":
            assert np.asarray(image).max() < 255, "16-bit grey is scaled, not clipped to white"
    client = TestClient(create_app(db))
    client.post(f"/s/{created['study_id']}/login", data={"secret": created["owner_secret"]})
    assert "file sizes may tell the systems apart" in client.get(f"/s/{created['study_id']}/results").text
