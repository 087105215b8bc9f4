"""VAEs: identity and a tiny diffusers AutoencoderKL saved to disk and loaded by path."""
import pytest
import torch

from gentron.text.encoder import seeded
from gentron.vae import build_vae


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    path = tmp_path_factory.mktemp("vae")
    model = seeded(0, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.5,
    ))
    model.save_pretrained(path)
    return path


def test_identity_vae():
    vae = build_vae({"kind": "identity"})
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert (vae.channels, vae.downsample, vae.scaling_factor) == (3, 1, 1.0)
    assert vae.encode(x) is x and vae.decode(x) is x
    assert vae.latent_shape((2, 5, 3, 8, 8)) == (2, 5, 3, 8, 8)
    # What a cell config passes: its generic keys are accepted and pixel space keeps scaling 1.
    assert build_vae({"kind": "identity", "path": None, "scaling_factor": 0.18215}).scaling_factor == 1.0


def test_autoencoder_kl_loads_by_path_and_round_trips_shapes(vae_dir):
    from diffusers import AutoencoderKL

    vae = build_vae({"kind": "autoencoder_kl", "path": str(vae_dir), "batch_size": 3, "scaling_factor": None})
    assert (vae.channels, vae.downsample, vae.scaling_factor) == (4, 2, 0.5)  # scaling from the config
    assert not any(p.requires_grad for p in vae.parameters())
    vae.train()
    assert not vae.model.training
    images = torch.rand(5, 3, 16, 16) * 2 - 1
    latents = vae.encode(images)
    assert latents.shape == (5, 4, 8, 8) == vae.latent_shape(images.shape)
    # Scaled posterior mean, batched in chunks of 3 with the same result as one pass.
    reference = AutoencoderKL.from_pretrained(vae_dir).eval()
    with torch.no_grad():
        mean = reference.encode(images).latent_dist.mode()
        torch.testing.assert_close(latents, mean * 0.5, atol=1e-5, rtol=1e-5)
        decoded = vae.decode(latents)
        torch.testing.assert_close(decoded, reference.decode(mean).sample.clamp(-1, 1), atol=1e-5, rtol=1e-5)
    assert decoded.shape == images.shape and decoded.abs().max() <= 1
    # Videos go frame by frame.
    video = images[:4].reshape(2, 2, 3, 16, 16)
    torch.testing.assert_close(vae.encode(video), latents[:4].reshape(2, 2, 4, 8, 8), atol=1e-5, rtol=1e-5)
    assert vae.decode(vae.encode(video)).shape == video.shape


def test_autoencoder_kl_spec_options(vae_dir):
    vae = build_vae({"kind": "autoencoder_kl", "path": str(vae_dir), "scaling_factor": 0.18215, "sample": True})
    assert vae.scaling_factor == 0.18215
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    a = vae.encode(images, generator=torch.Generator().manual_seed(0))
    b = vae.encode(images, generator=torch.Generator().manual_seed(0))
    c = vae.encode(images, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_vae_spec_errors():
    with pytest.raises(ValueError, match="vqgan.*not allowed.*identity.*autoencoder_kl"):
        build_vae({"kind": "vqgan"})
    with pytest.raises(ValueError, match="subfolder"):
        build_vae({"kind": "identity", "subfolder": "vae"})
    with pytest.raises(ValueError, match="scale"):
        build_vae({"kind": "autoencoder_kl", "scale": 1})
    with pytest.raises(FileNotFoundError, match="stabilityai/sd-vae-ft-ema.*huggingface-cli download"):
        build_vae({"kind": "autoencoder_kl", "path": "stabilityai/sd-vae-ft-ema"})
