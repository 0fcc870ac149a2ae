"""GPU readiness of the benchmark, tested on the CPU: every PyTorch tensor of a case lives on
``harness.torch_device()``, one failing case does not stop a run, a deadline turns the rest into skipped rows, the
results file is rewritten after every row, and the GPU profile writes ``gpu.json`` without the CPU-only extras."""

from __future__ import annotations

import json
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.bench import harness

torch = pytest.importorskip("torch")


def _toy(name: str, *, fail: str = "", check_hook=None) -> harness.Case:
    a = np.eye(4, dtype=np.float32)
    aj, at = jnp.asarray(a), torch.from_numpy(a)
    f = jax.jit(lambda x: x @ x)

    def check():
        if fail == "check":
            raise RuntimeError("boom in check")
        if check_hook:
            check_hook()
        return float(np.max(np.abs(np.asarray(f(aj)) - (at @ at).numpy())))

    def jax_fn():
        if fail == "jax":
            raise ValueError("boom in jax")
        return f(aj)

    return harness.Case(name, {"n": 4}, jax_fn, lambda: at @ at, check, atol=1e-6)


def test_run_cases_records_errors_and_skips_past_the_deadline():
    seen = []
    rows = harness.run_cases([_toy("a"), _toy("b", fail="check"), _toy("c", fail="jax")], repeats=1, warmup=0,
                             on_row=seen.append)
    assert [r["pipeline"] for r in seen] == ["a", "b", "c"] and seen == rows
    assert rows[0]["agree"] and "jax" in rows[0]
    assert rows[1]["error"] == "RuntimeError: boom in check" and "jax" not in rows[1]
    assert rows[2]["error"] == "ValueError: boom in jax"
    late = harness.run_cases([_toy("d"), _toy("e")], repeats=1, warmup=0, deadline=time.monotonic() - 1)
    assert [r.get("skipped") for r in late] == ["deadline", "deadline"] and "jax" not in late[0]
    table = harness.markdown(rows + late)
    assert "error: RuntimeError: boom in check" in table and table.count("skipped: deadline") == 2


def _fake_run(monkeypatch, tmp_path, cases, *extra_args, gpu=False):
    from jinterp.bench import __main__ as bench_main

    monkeypatch.setattr(harness, "on_gpu", lambda: gpu)
    monkeypatch.setattr(harness, "matmul_peak", lambda n=0: {"n": n, "jax_flop_per_s": 1e9})
    monkeypatch.setattr(bench_main, "_module", lambda name: types.SimpleNamespace(cases=lambda quick: cases))
    return bench_main.main(["--only", "backbones", "--no-scaling", "--repeats", "1", "--out", str(tmp_path),
                            *extra_args])


def test_run_writes_after_every_row_and_keeps_going_after_an_error(monkeypatch, tmp_path):
    stem = harness.results_name()
    written = []

    def read_so_far():  # called inside the third case: the first two rows must already be on disk
        written.append([r["pipeline"] for r in json.loads((tmp_path / f"{stem}.json").read_text())["results"]])

    result = _fake_run(monkeypatch, tmp_path, [_toy("first"), _toy("broken", fail="jax"),
                                               _toy("third", check_hook=read_so_far)], "--no-extras")
    assert written == [["first", "broken"]]
    rows = result["results"]
    assert [r["pipeline"] for r in rows] == ["first", "broken", "third"]
    assert "error" in rows[1] and rows[0]["agree"] and rows[2]["agree"]
    assert "error: ValueError: boom in jax" in (tmp_path / f"{stem}.md").read_text()


def test_deadline_turns_the_remaining_cases_into_skipped_rows(monkeypatch, tmp_path):
    result = _fake_run(monkeypatch, tmp_path, [_toy("x"), _toy("y")], "--no-extras", "--deadline-s", "1e-9")
    # past the deadline before the pipeline starts: one row for the whole pipeline, its cases never built
    assert result["results"] == [{"pipeline": "backbones", "params": {}, "agree": False, "skipped": "deadline"}]
    assert result["deadline_s"] == 1e-9


def test_gpu_profile_writes_gpu_json_and_records_the_skipped_extras(monkeypatch, tmp_path):
    result = _fake_run(monkeypatch, tmp_path, [_toy("g")], gpu=True)  # extras not switched off: GPU skips them
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved == result and (tmp_path / "gpu.md").is_file()
    assert result["deadline_s"] == 420.0 and result["results"][0]["agree"]
    assert set(result["extras_skipped"]) == {"devices", "conv", "synthparts", "readme"}
    assert "devices" not in result and not (tmp_path / "conv_cpu.json").exists()
    assert "device_kind" in result["machine"] and "torch_device" in result["machine"]


def test_torch_device_is_cpu_without_a_gpu_backend(monkeypatch):
    monkeypatch.setattr(harness, "on_gpu", lambda: False)
    assert harness.torch_device() == "cpu"
    monkeypatch.setattr(harness, "on_gpu", lambda: True)
    assert harness.torch_device() == ("cuda" if torch.cuda.is_available() else "cpu")


class _Devices(torch.overrides.TorchFunctionMode):
    """Records the device of every tensor going into or out of a torch function call."""

    def __init__(self):
        super().__init__()
        self.found: dict[str, str] = {}

    def _note(self, obj, where):
        for t in jax.tree.leaves(obj, is_leaf=lambda x: isinstance(x, torch.Tensor)):
            # 0-d CPU tensors (optimizer step counters) are host scalars on any device, CUDA included
            if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.dim() == 0):
                self.found.setdefault(t.device.type, where)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        self._note((args, kwargs), f"input of {name}")
        out = func(*args, **kwargs)
        self._note(out, f"output of {name}")
        return out


def _small_cases():
    """One tiny case per PyTorch twin and code path. Not the released CSG loop (``official=True``): it indexes the
    gate with a 0-d tensor per sample, which meta tensors cannot do (CUDA can); the vectorized step covers the rest
    of ``TorchCSG``. Not the ClaDec Python-loop sweep: it is ``cladec_step`` K times (covered by ``cladec_case``)."""
    from jinterp.bench import backbones, basis, cladec, csg, explainer, graph

    return [backbones.forward_case("convnet", 2, 32), backbones.forward_bf16_case("convnet", 2, 32),
            backbones.train_step_case("resnet20", 2, 32), backbones.train_step_bf16_case("resnet20", 2, 32),
            csg.step_case("std", 2), csg.step_case("csg", 2, official=False),
            cladec.cladec_case("flat", 0.001, 2, 8), cladec.cladec_bf16_case("flat", 2, 8),
            cladec.refae_case("flat", 2, 8),
            cladec.sweep_case("flat", 2, 8, torch_way="torch.func"),
            explainer._case("tiny", 2, (8, 8, 8), (4, 4, 8), 4),
            graph.estep_case("tiny", 8, 4, 0.1, 2), graph.em_iteration_case("tiny", 8, 4, 0.1, 3, memory_mb=1),
            basis.uibe_case(8, 7, 64), basis.tally_case(2, 4, 8, 16, (3, 3, 3, 2)), basis.ibd_case(600, 8, 3, 40)]


def test_every_torch_tensor_of_a_case_is_on_the_chosen_device(monkeypatch):
    """With ``torch_device()`` answering "meta", every timed PyTorch call must see meta tensors only: a model,
    input, label or constant left on the CPU shows up here (on a GPU it would be a device mismatch or a silent
    host computation)."""
    monkeypatch.setattr(harness, "torch_device", lambda: "meta")
    wrong = {}
    for case in _small_cases():
        with _Devices() as seen:
            case.torch_fn()
        if set(seen.found) != {"meta"}:
            wrong[f"{case.pipeline} {case.params}"] = seen.found
    assert not wrong, wrong
