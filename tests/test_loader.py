"""The in-memory loader: shuffling, normalisation, batch augmentation, mid-epoch restart."""

import numpy as np
import pytest
import torch

from kdkit.data.loader import Augment, InMemoryLoader, augment_batch, channel_stats


def _data(n=50, c=1, h=8, w=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8), rng.integers(0, 10, size=n)


def test_epoch_covers_every_sample_once_and_is_seeded():
    x, y = _data(53)
    a = InMemoryLoader(x, y, 10, shuffle=True, seed=3)
    assert len(a) == 6
    idx0 = torch.cat([b.index for b in a])
    assert sorted(idx0.tolist()) == list(range(53))
    idx0_again = torch.cat([b.index for b in a])
    assert torch.equal(idx0, idx0_again)
    a.set_epoch(1)
    idx1 = torch.cat([b.index for b in a])
    assert not torch.equal(idx0, idx1)
    b = InMemoryLoader(x, y, 10, shuffle=True, seed=4)
    assert not torch.equal(idx0, torch.cat([bb.index for bb in b]))
    assert len(InMemoryLoader(x, y, 10, drop_last=True)) == 5


def test_labels_follow_indices_and_normalisation_is_exact():
    x, y = _data(20, c=3)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    loader = InMemoryLoader(x, y, 7, shuffle=True, seed=0, mean=mean, std=std)
    for b in loader:
        assert torch.equal(b.y, torch.as_tensor(y)[b.index])
        raw = torch.as_tensor(x)[b.index].double() / 255
        expect = (raw - torch.tensor(mean).double().view(1, 3, 1, 1)) / torch.tensor(std).double().view(
            1, 3, 1, 1
        )
        torch.testing.assert_close(b.x.double(), expect, rtol=1e-5, atol=1e-5)
        assert b.x.dtype == torch.float32


def test_extras_follow_indices_across_ranks_and_as_views():
    x, y = _data(30)
    logits = torch.randn(30, 2, 5)  # a (N, K, C) cache; its first draw is a non-contiguous view
    extras = {"teacher.logits": logits[:, 0], "np": np.arange(30) * 10}
    for rank in (0, 1):
        loader = InMemoryLoader(x, y, 8, shuffle=True, seed=2, extras=extras, rank=rank, world_size=2)
        seen = 0
        for b in loader:
            assert torch.equal(b.extras["teacher.logits"], logits[b.index, 0])
            assert torch.equal(b.extras["np"], torch.as_tensor(extras["np"])[b.index])
            assert torch.equal(b.x, loader.normalize(torch.as_tensor(x)[b.index]))
            seen += len(b.index)
        assert seen == 15  # every second sample of each global batch


def test_channel_stats_match_numpy():
    x, _ = _data(30, c=3)
    mean, std = channel_stats(x)
    f = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, f.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, f.std(axis=(0, 2, 3)), rtol=1e-6)


def test_translation_moves_content_by_at_most_the_jitter():
    n, p = 200, 2
    x = torch.zeros(n, 1, 9, 9, dtype=torch.uint8)
    x[:, 0, 4, 4] = 255  # one bright pixel in the centre
    out = augment_batch(x, Augment(jitter=p), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    pos = out[:, 0].flatten(1).argmax(dim=1)
    dy, dx = pos // 9 - 4, pos % 9 - 4
    assert (out.flatten(1).sum(1) == 255).all()  # the pixel survives, nothing else appears
    assert dy.abs().max() == p and dx.abs().max() == p  # the full range is used...
    assert dy.abs().le(p).all() and dx.abs().le(p).all()  # ...and never exceeded
    assert len({(a, b) for a, b in zip(dy.tolist(), dx.tolist())}) == (2 * p + 1) ** 2


def test_flip_mirrors_about_half_the_images():
    x, _ = _data(400, c=1)
    xt = torch.as_tensor(x)
    out = augment_batch(xt, Augment(flip=True), torch.Generator().manual_seed(1))
    same = (out == xt).flatten(1).all(1)
    flipped = (out == xt.flip(3)).flatten(1).all(1)
    assert (same | flipped).all()
    assert 150 < int(flipped.sum()) < 250


def test_augmentation_is_reproducible_and_restartable_mid_epoch():
    x, y = _data(40)
    mk = lambda: InMemoryLoader(x, y, 8, shuffle=True, seed=5, augment=Augment(jitter=2, flip=True))  # noqa: E731
    full = [b.x for b in mk()]
    again = [b.x for b in mk()]
    assert all(torch.equal(a, b) for a, b in zip(full, again))
    resumed = mk()
    resumed.set_epoch(0, start_batch=3)
    rest = [b.x for b in resumed]
    assert len(rest) == 2 and all(torch.equal(a, b) for a, b in zip(full[3:], rest))


def test_bad_inputs_raise():
    x, y = _data(10)
    with pytest.raises(ValueError, match="uint8"):
        InMemoryLoader(x.astype(np.float32), y, 2)
    with pytest.raises(ValueError, match="labels"):
        InMemoryLoader(x, y[:5], 2)
    with pytest.raises(ValueError, match="channel"):
        InMemoryLoader(x, y, 2, mean=[0.1, 0.2], std=[1.0, 1.0])
