"""The meta-device memory estimate: the live-bytes tracker against hand counts, and the estimate's parts."""

from pathlib import Path

import torch
import torch.nn.functional as F

from gfbench.priors.official import OfficialArchitecture
from gfbench.priors.official.memory import LiveTensorBytes, estimate_repair_memory, fused_attention_shapes

FIXTURES = Path(__file__).parent / "fixtures" / "official"


def test_tracker_counts_live_storages_once():
    with LiveTensorBytes() as tracker:
        a = torch.empty(1000, device="meta")  # 4000 bytes
        b = a * 2  # +4000
        view = b[:10]  # a view: no new storage
        a.mul_(3)  # in place: no new storage
        del a, b
        assert tracker.live == 4000  # the view keeps b's storage alive
        del view
        c = torch.empty(500, device="meta")  # 2000 bytes
        assert tracker.live == 2000
    assert tracker.peak == 8000
    del c


def test_fused_attention_has_no_score_matrix():
    def peak(fused):
        q = torch.empty(1, 2, 4096, 64, device="meta", dtype=torch.float16)
        with LiveTensorBytes() as tracker:
            if fused:
                with fused_attention_shapes():
                    F.scaled_dot_product_attention(q, q, q)
            else:
                F.scaled_dot_product_attention(q, q, q)
        return tracker.peak

    score_matrix = 2 * 4096 * 4096 * 2
    assert peak(fused=False) >= score_matrix
    assert peak(fused=True) == 2 * 4096 * 64 * 2
    assert F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"  # restored


def test_estimate_adds_weights_and_the_largest_stage():
    architecture = OfficialArchitecture.from_json(FIXTURES / "tiny_architecture.json")
    one = estimate_repair_memory(architecture, height=32, width=48, frames=3, guidance_batch=1)
    two = estimate_repair_memory(architecture, height=32, width=48, frames=3, guidance_batch=2)
    unet = architecture.build("unet")
    assert one.parameters["unet"] == sum(p.numel() for p in unet.parameters())
    assert one.weights["unet"] == 2 * one.parameters["unet"]  # float16
    assert one.total == sum(one.weights.values()) + max(one.activations.values())
    assert set(one.activations) == {"vae_encode", "reference_image", "unet", "vae_decode"}
    assert 1.5 * one.activations["unet"] < two.activations["unet"] < 2.5 * one.activations["unet"]
    assert "GiB estimated" in one.summary()
