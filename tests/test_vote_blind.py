"""The blind study stays blind: served images are re-encoded from pixels only (no ICC profile, no
transparency chunk, no text, comments or EXIF; one format and one size for both images of a pair), images
are served only through a valid rater link, and a bad image is refused when the study is created."""
from __future__ import annotations

import io
import json
import re
import struct
from pathlib import Path

import pytest
from PIL import Image, ImageCms, PngImagePlugin
from starlette.testclient import TestClient

from report_fixtures import draw, prompts
from reports import study, votes
from reports.voteapp import create_app

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


def test_gif_comments_are_dropped_and_both_sides_are_gifs(tmp_path):
    plist = prompts(2)
    write_folder(tmp_path / "gif", plist, save_commented_gif)
    write_folder(tmp_path / "png", plist, save_tagged_png)
    db = tmp_path / "votes.sqlite"
    created = study.create(db, "gifs", {"gif": tmp_path / "gif", "png": tmp_path / "png"}, raters=1, checks=0)
    client = TestClient(create_app(db))
    served = [client.get(url) for url in screen_images(client, created["raters"][0])]
    assert {r.headers["content-type"] for r in served} == {"image/gif"}
    for response in served:
        assert MARK.encode() not in response.content
        image = Image.open(io.BytesIO(response.content))
        assert "comment" not in image.info and "icc_profile" not in image.info and "transparency" not in image.info
        assert image.size == (64, 64)


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
