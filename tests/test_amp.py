"""Mixed precision (issue 19): ``enable_amp`` / ``amp_dtype`` train the dual-view models under autocast, the losses
stay float32, half-precision attention masks do not overflow, and the device keys (``use_gpu``, ``gpu_id``)
are honoured. Everything here runs on the CPU (bfloat16 autocast); ``benchmarks/gpu_check.sh`` reruns the
suite on a GPU."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import build

from recbole_llmesr.config import LLMESRConfig, _single_device
from recbole_llmesr.config_checks import ConfigError
from recbole_llmesr.model.layers import MultiHeadAttention, attention_mask
from recbole_llmesr.model.losses import chunked_cross_entropy, sampled_softmax
from recbole_llmesr.quick_start import run_recbole
from recbole_llmesr.trainer import Trainer, autocast_dtype

MODELS = ["LLMESR_SASRec", "LLMESR_GRU4Rec", "LLMESR_BERT4Rec"]


def _train(model: str, cfg: dict) -> dict:
    result = run_recbole(model, "tiny", config_dict={**cfg, "epochs": 1})
    return {k: float(v) for k, v in result["test_result"].items()}


@pytest.mark.parametrize("model", MODELS)
def test_one_epoch_under_bfloat16_autocast(model, tiny):
    cfg = {**tiny["config"], "use_gpu": False}
    fp32 = _train(model, cfg)
    amp = _train(model, {**cfg, "enable_amp": True, "amp_dtype": "bfloat16"})
    assert set(amp) == set(fp32) and "ndcg@10" in amp
    finite = [k for k, v in amp.items() if not math.isnan(v)]  # empty groups are NaN in both runs
    assert all(math.isfinite(amp[k]) for k in finite)
    assert [k for k, v in fp32.items() if math.isnan(v)] == [k for k, v in amp.items() if math.isnan(v)]
    # One epoch on 40 users: bfloat16 rounding may reorder a few items, not change the model.
    for key in ("hit@10", "ndcg@10"):
        assert abs(amp[key] - fp32[key]) <= 0.25, (key, amp[key], fp32[key])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("loss_type", ["CE", "SSM", "BCE"])
def test_training_step_under_autocast_is_finite_and_float32(model, loss_type, tiny):
    cfg = {**tiny["config"], "use_gpu": False, "loss_type": loss_type, "teacher_update": "batch"}
    config, net, (train, _, _) = build(model, cfg)
    net.train()
    batch = next(iter(train))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net.calculate_loss(batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_trainer_sets_the_autocast_dtype(tiny):
    config, net, (train, _, _) = build("LLMESR_SASRec", {**tiny["config"], "enable_amp": True, "use_gpu": False})
    trainer = Trainer(config, net)
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.enable_scaler  # no GradScaler on the CPU
    seen = []
    original = net.calculate_loss

    def spy(interaction):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return original(interaction)

    net.calculate_loss = spy
    before = torch.get_autocast_dtype("cpu")
    with autocast_dtype("cpu", torch.float16):  # whatever the process had, the run uses amp_dtype
        trainer._train_epoch(train, 0)
        assert torch.get_autocast_dtype("cpu") == torch.float16  # restored
    assert seen and all(s == (True, torch.bfloat16) for s in seen)
    assert torch.get_autocast_dtype("cpu") == before


def test_float16_autocast_is_refused_on_cpu(tiny):
    with pytest.raises(ConfigError, match="amp_dtype: float16 needs a CUDA device"):
        LLMESRConfig("LLMESR_SASRec", "tiny", config_dict={**tiny["config"], "use_gpu": False, "enable_amp": True,
                                                           "amp_dtype": "float16"})


def test_amp_keys_are_validated(tiny):
    base = {**tiny["config"], "use_gpu": False}
    with pytest.raises(ConfigError, match="amp_dtype"):
        LLMESRConfig("LLMESR_SASRec", "tiny", config_dict={**base, "amp_dtype": "fp8"})
    with pytest.raises(ConfigError, match="enable_amp"):
        LLMESRConfig("LLMESR_SASRec", "tiny", config_dict={**base, "enable_amp": "yes"})
    with pytest.warns(UserWarning, match="enable_scaler is ignored"):
        LLMESRConfig("LLMESR_SASRec", "tiny", config_dict={**base, "enable_amp": True, "enable_scaler": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the plugin's keys are known: no UnknownKeyWarning
        LLMESRConfig("LLMESR_SASRec", "tiny", config_dict={**base, "enable_amp": True, "amp_dtype": "bfloat16"})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_attention_masks_do_not_overflow(dtype):
    # Boolean masks: SDPA turns them into -inf itself, so no -1e9 constant can overflow float16 (max 65504).
    torch.manual_seed(0)
    seq = torch.tensor([[3, 4, 0, 0, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    attention = MultiHeadAttention(8, 2, attn_dropout=0.0).to(dtype).eval()
    x = torch.randn(3, 5, 8, dtype=dtype) * 30  # large activations
    for causal in (True, False):
        mask = attention_mask(seq, causal)
        assert mask.dtype == torch.bool
        out = attention(x, x, mask)
        assert out.dtype == dtype and torch.isfinite(out).all()
        # Padded keys get no weight: changing them leaves the real positions' outputs alone.
        x2 = x.clone()
        x2[seq == 0] = 100
        out2 = attention(x2, x2, mask)
        real = seq != 0
        assert torch.allclose(out[real].float(), out2[real].float(), atol=1e-2)


def test_losses_are_float32_for_half_precision_inputs():
    torch.manual_seed(0)
    h = (torch.randn(6, 8) * 20).to(torch.bfloat16).requires_grad_()
    items = (torch.randn(11, 8) * 20).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 11, (6,))
    bias = torch.log1p(torch.arange(11).float()) * 3  # a float32 log-prior
    loss = chunked_cross_entropy(h, items, targets, bias, block=4)
    reference = torch.nn.functional.cross_entropy(h.float() @ items.float().T + bias, targets)
    assert loss.dtype == torch.float32 and torch.isclose(loss, reference, rtol=1e-2)
    loss.backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(items.grad).all()
    neg_ids = torch.tensor([1, 2, 3])
    offsets = torch.full((3,), 1e3)  # would lose its fractional part in bfloat16
    ssm = sampled_softmax(h, items[targets], items[neg_ids], targets, neg_ids, torch.zeros(6) + 0.5, offsets)
    assert ssm.dtype == torch.float32 and torch.isfinite(ssm)


def test_use_gpu_false_and_gpu_id_are_honoured(monkeypatch):
    cuda = torch.device("cuda")
    assert _single_device({"device": torch.device("cpu"), "use_gpu": True, "gpu_id": "0"}).type == "cpu"
    # RecBole picks CUDA whenever gpu_id is set, whatever use_gpu says.
    assert _single_device({"device": cuda, "use_gpu": False, "gpu_id": "0"}) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # CUDA_VISIBLE_DEVICES=gpu_id took effect
    assert _single_device({"device": cuda, "use_gpu": True, "gpu_id": "1"}) == cuda
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # CUDA started first: every GPU still visible
    assert _single_device({"device": cuda, "use_gpu": True, "gpu_id": "2"}) == torch.device("cuda", 2)
    assert _single_device({"device": cuda, "use_gpu": True, "gpu_id": "0,1,2,3"}) == cuda
