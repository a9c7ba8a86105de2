"""nandoctor.torch: PyTorch training recorded into the run directory and diagnosed like the NumPy engine's.

The fault scripts (tests/torch_scripts/faults.py) each train the same data as a YAML config with the
same fault; the diagnoser must put the same cause on top for the PyTorch run as for the NumPy run.
Skipped without PyTorch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
nn = torch.nn

import nandoctor.diagnose  # noqa: E402
from nandoctor.diagnose import diagnose_dir  # noqa: E402
from nandoctor.telemetry.reader import load_run  # noqa: E402
from nandoctor.torch import Recorder, merge_ranks  # noqa: E402
from nandoctor.torch.lossgraph import infer_loss  # noqa: E402
from nandoctor.torch.sampling import Sampler  # noqa: E402
from nandoctor.training import run_training  # noqa: E402

SCRIPTS = Path(__file__).parent / "torch_scripts"
sys.path.insert(0, str(SCRIPTS))
import faults  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: one thread is faster than two and immune to other processes on the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    return faults.scripts(tmp_path_factory.mktemp("data"))


def top(d) -> str | None:
    return d.causes[0].id if d.causes and not d.healthy else None


# ---- the fault scripts against their YAML twins -----------------------------------------------------

@pytest.mark.parametrize("name", ["unscaled_inputs", "high_lr", "float16_overflow", "textbook_log0", "nan_in_data",
                                  "deep_sigmoid", "healthy"])
def test_same_top_cause_as_the_numpy_engine(name, scripts, tmp_path):
    """Recorded with the NumPy engine's retention policy exactly (overhead=None: no cost cap, which
    would take fewer samples on these tiny, fast networks and make the comparison depend on timing)."""
    script = scripts[name]
    _, numpy_dir, _ = run_training(script.cfg(), None, tmp_path / "numpy")
    ours = diagnose_dir(numpy_dir)
    theirs = diagnose_dir(faults.run_torch(script, tmp_path / "torch", overhead=None))
    if not script.expect:
        assert ours.healthy and theirs.healthy, (ours.verdict, theirs.verdict, theirs.to_json())
        return
    assert top(ours) in script.expect, ours.verdict
    assert top(theirs) == top(ours), (ours.verdict, json.dumps(theirs.to_json(), indent=1))
    assert not theirs.healthy
    for cause in theirs.causes:  # no config: every fix is advice, never a config patch
        assert all(fix.patch is None for fix in cause.fixes)


@pytest.mark.parametrize("name", ["unscaled_inputs", "high_lr", "float16_overflow", "nan_in_data"])
def test_default_settings_find_the_same_cause(name, scripts, tmp_path):
    """The same scripts at the recorder's defaults (the cost cap on): faults that show early or in the data."""
    script = scripts[name]
    assert top(diagnose_dir(faults.run_torch(script, tmp_path / "torch"))) == script.expect[0]


def test_fault_runs_name_where_it_started(scripts, tmp_path):
    run = load_run(faults.run_torch(scripts["nan_in_data"], tmp_path / "nan"))
    fn = run.first_nonfinite
    assert (fn["step"], fn["phase"], fn["tensor"], fn["role"]) == (1, "data", "input", "producer")
    assert "non-finite input values" in fn["detail"]
    assert run.profile["nonfinite_inputs"]["train"] > 0 and run.status == "diverged"
    run = load_run(faults.run_torch(scripts["float16_overflow"], tmp_path / "f16"))
    assert run.meta["dtype"] == "float16" and run.first_nonfinite["phase"] == "loss"
    assert "float16 max" in run.first_nonfinite["detail"]


# ---- what a run directory holds -----------------------------------------------------------------------

class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 16)

    def forward(self, x):
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x))))  # functional activations


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.norm = nn.BatchNorm1d(16)
        self.head = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 3))

    def forward(self, x):
        return self.head(self.norm(self.encoder(x)))


def batches(n=20, rows=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(rows, 4, generator=g)
        yield x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long()


def train(model, run_dir, steps=20, loss_fn=F.cross_entropy, lr=0.05, every="auto", pass_batches=True, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with Recorder(model, run_dir, every=every, strict=True, **kw) as rec:
        for x, y in batches(steps):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            rec.step(loss, opt, **({"inputs": x, "targets": y} if pass_batches else {}))
            opt.step()
    return load_run(run_dir)


def test_layers_are_modules_named_by_path(tmp_path):
    torch.manual_seed(0)
    run = train(Net(), tmp_path / "r")
    rows = {r["name"]: r for r in run.layers}
    assert list(rows) == ["encoder.fc1", "encoder.fc2", "head.0", "head.3"]
    assert [rows[n]["activation"] for n in rows] == ["relu", "sigmoid", "tanh", "softmax"]
    assert rows["encoder.fc2"]["norm"] == "batch" and rows["head.0"]["dropout"] == pytest.approx(0.1)
    assert (rows["encoder.fc1"]["fan_in"], rows["encoder.fc1"]["fan_out"]) == (4, 16)
    assert rows["head.3"]["init"] == "unknown" and rows["head.3"]["init_std"] > 0
    meta = run.meta
    assert meta["engine"] == "torch" and meta["status"] == "completed" and meta["steps"] == 20
    assert meta["dtype"] == "float32" and meta["batch_size"] == 32 and meta["first_nonfinite"] is None
    assert meta["loss"]["name"] == "cross_entropy" and meta["loss"]["stable"] and meta["loss"]["reduction"] == "mean"
    pre = meta["preflight"]
    assert pre["chance_loss"] == pytest.approx(math.log(3)) and math.isfinite(pre["initial_loss"])
    assert [p["layer"] for p in pre["layers"]] == [0, 1, 2, 3]
    profile = run.profile
    assert profile["task"] == "classification" and profile["n_classes"] == 3 and profile["n_features"] == 4
    assert sum(profile["target"]["class_counts"]) == 640 and profile["features"][0]["std"] == pytest.approx(1, abs=0.2)
    for tensor in ("pre_activation", "activation", "weight", "grad_weight", "update", "grad_output", "normalized"):
        assert tensor in run.stats, tensor
    ratio = run.stat("update", "ratio")
    assert ratio.shape == (20, 4) and (ratio[:-1] > 0).all()  # the last step's update is after close
    assert run.stat("activation", "saturated")[0, 1] >= 0  # sigmoid saturation measured
    assert len(run.steps["step"]) == 20 and run.steps["ok"].all() and (run.steps["lr"] == 0.05).all()
    assert len(run.epochs) == 1 and run.epochs[0]["train_metric"] is not None  # closed partial epoch


def test_sampling_stride_and_anomalies(tmp_path):
    torch.manual_seed(0)
    run = train(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), tmp_path / "r", steps=23, every=5)
    assert list(run.stat_steps) == [1, 5, 10, 15, 20, 23]  # step 1 (the preflight) and the last step always
    run = train(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), tmp_path / "auto", steps=45,
                overhead=None)  # the NumPy engine's stride exactly: no cost cap
    assert list(run.stat_steps) == [*range(1, 21), 30, 40, 45]


def test_auto_stride_caps_the_cost_of_statistics():
    def walk(s, steps, step_s=0.0, before=0.0, after=0.0, pause_every=0):
        """Sampled work costs `before` (forward hooks) and `after` (statistics, update) seconds."""
        seen, prev = [], False
        for k in range(1, steps + 1):
            hit = s.sampled(k)
            seen += [k] * hit
            interval = step_s + (before if hit else 0.0) + (after if prev else 0.0)
            if pause_every and k % pause_every == 0:
                interval += 50 * step_s  # a validation pass: neither step time nor sampling cost
            if k > 1:
                s.measured(interval, hit or prev, 0.5 * ((before if hit else 0.0) + (after if prev else 0.0)))
            s.advance(k, hit)
            prev = hit
        return seen

    assert walk(Sampler("auto", None), 40) == [*range(1, 21), 30, 40]  # nothing measured: the engine's policy
    s = Sampler("auto", None, budget=0.05)
    walk(s, 2000, 0.002, 0.001, 0.003, pause_every=97)  # a sample costs 4 ms, 2 steps' time
    assert 40 <= s.stride <= 46 and abs(s.step_seconds - 0.002) < 1e-4  # 4 ms / (5 % of 2 ms); pauses cost little
    s = Sampler("auto", None, budget=0.01)
    walk(s, 2000, 0.002, 0.001, 0.003)
    assert s.stride == 50  # at most 5x the policy's stride
    s = Sampler(7, None)
    assert walk(s, 30, 0.002, 0.01, 0.01) == [1, 7, 14, 21, 28]  # every=N: never capped
    assert Sampler("auto", 100_000).base == 25  # a known total: the engine's stride, ~4,000 samples


def test_loss_read_from_the_autograd_graph():
    z = torch.randn(8, 3, requires_grad=True)
    y = torch.randint(0, 3, (8,))
    fns = {id(z.grad_fn)}
    assert infer_loss(F.cross_entropy(z, y, reduction="sum"), fns)["reduction"] == "sum"
    textbook = -torch.log(torch.exp(z) / torch.exp(z).sum(1, keepdim=True))[torch.arange(8), y].mean()
    info = infer_loss(textbook, fns)
    assert (info["name"], info["stable"], info["reduction"]) == ("cross_entropy", False, "mean")
    p = torch.sigmoid(z[:, 0])
    t = (y > 0).float()
    info = infer_loss(-(t * torch.log(p) + (1 - t) * torch.log(1 - p)).sum(), fns)
    assert (info["name"], info["stable"], info["reduction"]) == ("binary_cross_entropy", False, "sum")
    info = infer_loss(F.binary_cross_entropy_with_logits(z[:, 0], t), fns)
    assert (info["name"], info["stable"], info["output_activation"]) == ("binary_cross_entropy", True, "sigmoid")
    assert infer_loss(F.mse_loss(z, torch.zeros(8, 3)), fns)["name"] == "mse"


# ---- the first non-finite value, at module level ---------------------------------------------------------

def first_nonfinite(model, tmp_path, steps=3, dtype=torch.float32, scale=1.0, opt=None, loss_fn=None):
    model = model.to(dtype)
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = loss_fn or (lambda out, y: F.cross_entropy(out.float(), y))
    with Recorder(model, tmp_path / "r", strict=True) as rec:
        for x, y in batches(steps):
            x = (x * scale).to(dtype)
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            rec.step(loss, opt, inputs=x, targets=y)
            opt.step()
    return load_run(tmp_path / "r").first_nonfinite


def test_forward_overflow_producer(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    with torch.no_grad():
        model[2].weight.mul_(3000.0)
    fn = first_nonfinite(model, tmp_path, dtype=torch.float16, scale=30.0)
    assert (fn["step"], fn["phase"], fn["layer"], fn["tensor"], fn["role"], fn["module"]) == \
        (1, "forward", 1, "pre_activation", "producer", "2")
    assert "float16 max 6.55e+04" in fn["detail"] and "|W| max" in fn["detail"]


class LogBetween(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.log(self.a(x)))  # log of negative pre-activations: NaN between two modules


class WhereSqrt(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        z = self.a(x)  # the finite forward of a NaN backward: sqrt's gradient at z < 0 is NaN, times 0 is NaN
        return self.b(torch.where(z > 0, torch.sqrt(z), torch.zeros_like(z)))


def test_functional_op_in_forward_is_the_producer(tmp_path):
    torch.manual_seed(0)
    fn = first_nonfinite(LogBetween(), tmp_path)
    assert (fn["phase"], fn["layer"], fn["tensor"], fn["role"]) == ("forward", 1, "input", "producer")
    assert fn["module"] == "b"
    assert "between a and b" in fn["detail"]


def test_backward_producer(tmp_path):
    torch.manual_seed(0)
    fn = first_nonfinite(WhereSqrt(), tmp_path)
    assert (fn["step"], fn["phase"], fn["layer"], fn["tensor"], fn["module"]) == (1, "backward", 0, "grad_output", "a")
    assert "from b to a" in fn["detail"]


def test_update_producer_float16_adam(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).half()
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # dead units: gradients of exactly 0, and Adam's eps is 0 in float16
    fn = first_nonfinite(model, tmp_path, dtype=torch.float16, opt=torch.optim.Adam(model.parameters(), lr=1e-3))
    assert (fn["step"], fn["phase"], fn["layer"], fn["tensor"]) == (1, "update", 0, "weight")
    assert "eps 1e-08 rounds to 0 in float16" in fn["detail"]


def test_textbook_loss_names_log_zero(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())
    with torch.no_grad():
        model[2].weight.mul_(200.0)

    def loss_fn(p, y):
        t = (y > 0).float().reshape(p.shape)
        return -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()

    fn = first_nonfinite(model, tmp_path, loss_fn=loss_fn)
    assert (fn["phase"], fn["tensor"]) == ("loss", "loss")
    assert "textbook binary_cross_entropy" in fn["detail"] and "log(0)" in fn["detail"]


def test_fault_between_samples_is_located_by_replay(tmp_path):
    """Module hooks are off between sampled steps: the failing step's forward is re-run with them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3)).half()
    with torch.no_grad():
        model[0].weight.mul_(4.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Recorder(model, tmp_path / "r", every=100, strict=True) as rec:
        for k, (x, y) in enumerate(batches(30), 1):
            x = x.half() * (8000.0 if k == 25 else 1.0)  # one batch whose pre-activations pass 65504
            opt.zero_grad()
            loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            rec.step(loss, opt)
            if torch.isfinite(loss):
                opt.step()
    fn = load_run(tmp_path / "r").first_nonfinite
    assert (fn["step"], fn["phase"], fn["layer"], fn["tensor"], fn["role"]) == (25, "forward", 0, "pre_activation",
                                                                              "producer")
    assert "re-running the step's forward" in fn["detail"] and "float16 max" in fn["detail"]


def test_backward_fault_between_samples(tmp_path):
    """No output-gradient hooks between samples: the first layer's bias gradient catches it, and the
    parameter gradients, from the output down, name where it started."""
    torch.manual_seed(0)
    model = WhereSqrt()
    model.shift = 10.0  # sqrt(z + 10): no negative argument, until the shift goes at step 25
    model.forward = lambda x: model.b(torch.where((z := model.a(x)) > 0, torch.sqrt(z + model.shift),
                                                  torch.zeros_like(z)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Recorder(model, tmp_path / "r", every=100, strict=True) as rec:
        for k, (x, y) in enumerate(batches(30), 1):
            model.shift = 0.0 if k >= 25 else 10.0
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            rec.step(loss, opt)
            opt.step()
    fn = load_run(tmp_path / "r").first_nonfinite
    assert (fn["step"], fn["phase"], fn["layer"], fn["tensor"], fn["module"]) == (25, "backward", 0, "grad_weight", "a")
    assert "from b to a" in fn["detail"]


def test_replay_leaves_training_untouched(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rec = Recorder(model, tmp_path / "r", every=100, strict=True)
    for k, (x, y) in enumerate(batches(5), 1):
        opt.zero_grad()
        out = model(x)
        F.cross_entropy(out, y).backward()
        if k == 5:  # an unsampled step: no hooks ran; re-run its forward as a non-finite loss would
            assert not rec.tracer.trace
            rng, stats = torch.get_rng_state(), model[1].running_mean.clone()
            rec.tracer.replay()
            assert torch.equal(rng, torch.get_rng_state()) and torch.equal(stats, model[1].running_mean)
            assert torch.equal(rec.tracer.trace[-1].out, out)  # the same dropout masks and batch statistics
            assert [e.name for e in rec.tracer.trace] == ["0", "1", "2", "4"]
        rec.step(F.cross_entropy(out.detach(), y), opt)
        opt.step()
    rec.close()


# ---- the loop around it -------------------------------------------------------------------------------------

def test_context_manager_statuses(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for exc, status in ((KeyboardInterrupt, "interrupted"), (RuntimeError, "interrupted")):
        run_dir = tmp_path / exc.__name__
        with pytest.raises(exc), Recorder(model, run_dir) as rec:
            for x, y in batches(3):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                rec.step(F.cross_entropy(model(x), y), opt)
                opt.step()
            raise exc("stop")
        run = load_run(run_dir)
        assert run.status == status and run.meta["steps"] == 3
        assert any(e["kind"] == "exception" and e["detail"]["type"] == exc.__name__ for e in run.events)
    with pytest.raises(FileExistsError):
        Recorder(model, tmp_path / "RuntimeError")
    Recorder(model, tmp_path / "RuntimeError", overwrite=True).close()
    assert load_run(tmp_path / "RuntimeError").meta["steps"] == 0


def test_wrong_placement_warns_once(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="before optimizer.step"), Recorder(model, tmp_path / "r",
                                                                                optimizer=opt) as rec:
        for x, y in batches(4):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            rec.step(loss, opt)


def test_recorder_errors_never_stop_training(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(model, tmp_path / "r")
    monkeypatch.setattr(rec, "_grad_norm", lambda: 1 / 0)
    with pytest.warns(RuntimeWarning, match="recorder disabled"):
        for x, y in batches(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            rec.step(loss, opt)
            opt.step()
    rec.close()
    assert load_run(tmp_path / "r").status == "completed"


def test_healthy_run_without_batches_stays_healthy(tmp_path):
    torch.manual_seed(0)
    train(Net(), tmp_path / "r", steps=60, pass_batches=False)
    d = diagnose_dir(tmp_path / "r")
    assert d.healthy, d.to_json()


def test_importing_nandoctor_needs_no_torch(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "import nandoctor, nandoctor.diagnose, nandoctor.torch\n"
            "from nandoctor.torch import merge_ranks\n"
            "try:\n    from nandoctor.torch import Recorder\nexcept ImportError as e:\n    print('ImportError', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ImportError" in out and "nandoctor[torch]" in out


# ---- torch.distributed ---------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_ddp_two_ranks_name_the_rank_and_step(tmp_path):
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(SCRIPTS / "ddp_nan.py"), str(run_dir), "1", "3"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "telemetry.sqlite").exists() and (run_dir / "rank1" / "telemetry.sqlite").exists()
    merged = merge_ranks(run_dir)
    assert merged["world_size"] == 2 and merged["missing"] == [] and merged["status"] == "diverged"
    assert merged["rank"] == 1 and merged["path"] == str(run_dir / "rank1")
    fn = merged["first_nonfinite"]
    assert (fn["rank"], fn["step"], fn["phase"], fn["tensor"]) == (1, 3, "data", "input")
    rank0 = merged["ranks"][0]["first_nonfinite"]  # rank 0 only received the NaN through the all-reduce
    assert (rank0["step"], rank0["phase"], rank0["role"]) == (3, "backward", "propagator")
    assert load_run(run_dir).meta["world_size"] == 2
    assert top(diagnose_dir(merged["path"])) == "nan_in_data"
    if hasattr(nandoctor.diagnose, "merged_ranks"):  # diagnose reads the ranks together (proposed on issue 9)
        d = diagnose_dir(run_dir)
        assert top(d) == "nan_in_data" and "rank 1 of 2" in d.verdict, d.verdict
        assert d.first_nonfinite["rank"] == 1 and len(d.to_json()["ranks"]) == 2
