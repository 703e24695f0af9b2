"""VLLMEngine.sync_weights against a stand-in `vllm` module (vLLM itself needs CUDA): which vLLM API it
uses for each version range, that it sends Hugging Face names, and that with LoRA it sends only the
merged layers the adapters change, equal to peft's own merge_and_unload."""
import copy
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from lightrl import tiny
from lightrl.config import Config
from lightrl.rollout import RELOAD_API, VLLMEngine

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class FakeWorker:
    """What LLM.collective_rpc reaches: a worker whose model records what it is asked to load."""

    def __init__(self, log):
        self.log = log
        model = types.SimpleNamespace(load_weights=lambda weights: self.record("load_weights", weights))
        self.model_runner = types.SimpleNamespace(model=model)

    def record(self, method, weights):
        self.log.append((method, [(n, t.clone()) for n, t in weights]))

    def reload_weights(self, weights_iterator=None, weights_path=None, is_checkpoint_format=True):
        self.record("reload_weights", weights_iterator)


class FakeLLM:
    """vllm.LLM as far as VLLMEngine uses it; every call lands in `log`."""

    def __init__(self, **kwargs):
        self.kwargs, self.log = kwargs, []
        self.worker = FakeWorker(self.log)

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        # vLLM's run_method: a name is a worker method, a callable gets the worker first.
        fn = getattr(self.worker, method) if isinstance(method, str) else (lambda *a, **k: method(self.worker, *a, **k))
        return [fn(*args, **(kwargs or {}))]

    def reset_prefix_cache(self):
        self.log.append(("reset_prefix_cache", None))

    def sleep(self, level):
        self.log.append(("sleep", level))

    def wake_up(self):
        self.log.append(("wake_up", None))


@pytest.fixture
def fake_vllm(monkeypatch):
    """Install a stand-in `vllm`; call it with reload_api=True for a vLLM that has its weight-reload API."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    def install(reload_api: bool):
        vllm = types.ModuleType("vllm")
        vllm.LLM = FakeLLM
        monkeypatch.setitem(sys.modules, "vllm", vllm)
        if reload_api:
            parts = RELOAD_API.split(".")
            for i in range(2, len(parts) + 1):
                monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        tok = tiny.build_tokenizer()
        return VLLMEngine("unused-path", tok, stop_ids=[tok.eos_token_id], dtype="float32",
                          gpu_memory_utilization=0.3, max_model_len=64, seed=0, sleep=True)
    return install


def loads(engine):
    """The (method, [(name, tensor)]) load calls the engine's worker received."""
    return [c for c in engine.llm.log if c[0] in ("reload_weights", "load_weights")]


def lora_model(targets=TARGETS, **config):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                                        **config))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))
    with torch.no_grad():  # lora_B starts at zero: make the adapters change the weights
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return model


def test_vllm_with_the_reload_api_gets_every_weight_by_its_hf_name(fake_vllm):
    engine = fake_vllm(reload_api=True)
    model = tiny.build_model(tiny.build_tokenizer(), seed=0)
    engine.sleep()
    engine.sync_weights(model)
    assert [c[0] for c in engine.llm.log] == ["sleep", "wake_up", "reload_weights", "reset_prefix_cache"]
    (_, sent), = loads(engine)
    want = dict(model.named_parameters())  # a tied lm_head once, as the embedding
    assert [n for n, _ in sent] == list(want) and len(sent) == 2 * 9 + 2 == 20
    assert "model.layers.0.self_attn.q_proj.weight" in want and "lm_head.weight" not in want
    assert all(torch.equal(t, want[n]) for n, t in sent)


def test_older_vllm_loads_through_each_workers_model(fake_vllm):
    engine = fake_vllm(reload_api=False)
    model = tiny.build_model(tiny.build_tokenizer(), seed=0)
    engine.sync_weights(model)
    (method, sent), = loads(engine)
    assert method == "load_weights"
    assert [n for n, _ in sent] == [n for n, _ in model.named_parameters()]
    assert engine.llm.log[-1] == ("reset_prefix_cache", None)


@pytest.mark.parametrize("reload_api", [True, False])
def test_lora_sends_only_the_merged_target_layers(fake_vllm, reload_api):
    pytest.importorskip("peft")
    engine = fake_vllm(reload_api=reload_api)
    model = lora_model()
    merged = copy.deepcopy(model).merge_and_unload().state_dict()  # peft's merge, HF names
    base = {n.replace(".base_layer.", "."): p for n, p in model.get_base_model().named_parameters()}
    engine.sync_weights(model)
    (_, sent), = loads(engine)
    names = [n for n, _ in sent]
    assert names == [f"model.layers.{i}.{m}.{p}.weight" for i in range(2)
                     for m, ps in (("self_attn", TARGETS[:4]), ("mlp", TARGETS[4:])) for p in ps]
    assert len(names) == 14 < len(merged)  # no embedding, norm or lm_head
    for n, t in sent:
        torch.testing.assert_close(t, merged[n], rtol=0, atol=1e-6)
        assert (t - base[n]).abs().max() > 0.1, n  # the adapters' delta is in it


def test_lora_on_part_of_a_fused_layer_sends_the_whole_layer(fake_vllm):
    """LoRA on q_proj and v_proj: vLLM's qkv_proj also gets k_proj and the (unchanged) biases."""
    pytest.importorskip("peft")
    engine = fake_vllm(reload_api=True)
    model = lora_model(targets=("q_proj", "v_proj"), attention_bias=True)
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    engine.sync_weights(model)
    (_, sent), = loads(engine)
    changed = [f"model.layers.{i}.self_attn.{p}.weight" for i in range(2) for p in ("q_proj", "v_proj")]
    whole = sorted(f"model.layers.{i}.self_attn.{p}.{leaf}" for i in range(2) for p in ("q_proj", "k_proj", "v_proj")
                   for leaf in ("weight", "bias") if (p, leaf) not in (("q_proj", "weight"), ("v_proj", "weight")))
    assert [n for n, _ in sent] == changed + whole
    for n, t in sent:
        torch.testing.assert_close(t, merged[n], rtol=0, atol=1e-6)


def test_a_tiny_lora_policy_syncs_its_14_adapted_weights(fake_vllm):
    """lightrl's own LoRA wrapping (with_lora) on the embedded model, default targets."""
    pytest.importorskip("peft")
    from lightrl import model as lmodel
    engine = fake_vllm(reload_api=True)
    policy = lmodel.with_lora(tiny.build_model(tiny.build_tokenizer(), seed=0), Config(lora_r=4), ckpt=None)
    engine.sync_weights(policy)
    (_, sent), = loads(engine)
    assert len(sent) == 14 and all(n.startswith("model.layers.") and "lora" not in n for n, _ in sent)


FSDP_SCRIPT = '''
import json
import sys

import torch
from lightrl import dist, tiny
from lightrl.config import Config
from lightrl.model import merged_weights, with_lora
from lightrl.rollout import whole_layers

dist.init(torch.device("cpu"))
rows = []
for lora in (False, True):
    model = tiny.build_model(tiny.build_tokenizer(), seed=0)
    if lora:
        model = with_lora(model, Config(lora_r=4), ckpt=None)
        torch.manual_seed(1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
    want = [(n, t.clone()) for n, t in merged_weights(model)]
    dist.shard(model, None)
    got = list(whole_layers(merged_weights(model), model))
    assert [n for n, _ in got] == [n for n, _ in want], [n for n, _ in got][:4]
    assert all(type(t) is torch.Tensor for _, t in got), "a DTensor shard reached the engine"
    err = max((t - w).abs().max().item() for (_, t), (_, w) in zip(got, want))
    rows.append([lora, len(got), err])
with open(f"{sys.argv[1]}/rank{dist.rank()}.json", "w") as f:  # not stdout: torchrun interleaves the ranks'
    json.dump(rows, f)
dist.close()
'''


@pytest.mark.slow
def test_an_fsdp2_sharded_policy_sends_whole_tensors(tmp_path):
    """2 gloo ranks: merged_weights of the sharded policy (plain, and LoRA) equals the unsharded one's."""
    pytest.importorskip("peft")
    script = tmp_path / "sync.py"
    script.write_text(FSDP_SCRIPT)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        rows = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert [(lora, n) for lora, n, _ in rows] == [(False, 20), (True, 14)]
        assert all(err <= 1e-6 for *_, err in rows)
