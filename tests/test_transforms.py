"""Why the two centre crops stay hand-written: torchvision's v2 transforms round the crop offset and
the resized side differently, so they would move pixels of the training data (DiT/ADM's
`center_crop_arr` convention: floor offsets) and of the COCO references (clean-fid's COCO protocol)."""
import numpy as np
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from eval.coco import center_crop_resize as coco_crop
from gentron.data.real import center_crop_resize as data_crop


def image(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_training_crop_floors_the_offset_where_torchvision_rounds():
    odd = image(23, 20)
    ours = np.asarray(data_crop(odd, 20))
    theirs = np.asarray(v2.Compose([v2.Resize(20, interpolation=InterpolationMode.BICUBIC), v2.CenterCrop(20)])(odd))
    assert not np.array_equal(ours, theirs)
    assert np.array_equal(ours, np.asarray(odd)[:, 1:21])  # offset 1.5: floor keeps column 1, torchvision starts at 2


def test_coco_reference_crop_floors_the_offset_where_torchvision_rounds():
    odd = image(23, 20)
    ours = np.asarray(coco_crop(odd, 20))
    theirs = np.asarray(v2.Compose([v2.CenterCrop(20), v2.Resize((20, 20), interpolation=InterpolationMode.LANCZOS)])(odd))
    assert not np.array_equal(ours, theirs)
    assert np.array_equal(ours, np.asarray(odd)[:, 1:21])
