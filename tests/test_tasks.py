"""studies.tasks: copy and adding tasks (Gu et al. 2020, arXiv:1910.09890, §3.1, App. D.1) — construction, seeding, baselines, registry."""
import math

import pytest
import torch
from torch.nn import functional as F

from studies import tasks
from studies.tasks import AddingTask, CopyTask, get_task, memoryless_copy_loss


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- copy
@pytest.mark.parametrize("n", [0, 7, 100])
def test_copy_construction(n):
    t = CopyTask(n)
    x, y = t.batch(32, gen(0))
    L = n + 20
    assert t.length == L and t.input_size == 10 and t.num_classes == t.output_size == 8 and t.readout == 10
    assert x.shape == (32, L, 10) and x.dtype == torch.float32 and y.shape == (32, 10) and y.dtype == torch.int64
    assert torch.equal(x.sum(-1), torch.ones(32, L))  # one-hot
    tokens = x.argmax(-1)
    assert ((tokens[:, :10] >= 1) & (tokens[:, :10] <= 8)).all()  # a_0..a_9 from {1..8}
    assert (tokens[:, 10:10 + n] == 0).all() and (tokens[:, -10:] == 9).all()  # N blanks, then 10 cues
    assert torch.equal(y, tokens[:, :10] - 1)  # recall a_0..a_9 in order (class = symbol - 1)


def test_copy_all_steps_targets_use_a_blank_class():
    t = CopyTask(5, targets="all")
    x, y = t.batch(16, gen(1))
    assert t.num_classes == 9 and t.blank_class == 8 and t.readout == t.length == 25 and y.shape == (16, 25)
    assert (y[:, :15] == 8).all() and torch.equal(y[:, -10:], x.argmax(-1)[:, :10] - 1)
    x_last, y_last = CopyTask(5).batch(16, gen(1))  # same symbols for the same seed
    assert torch.equal(x, x_last) and torch.equal(y[:, -10:], y_last)


def test_copy_symbols_are_uniform():
    _, y = CopyTask(1).batch(4000, gen(2))
    freq = torch.bincount(y.flatten(), minlength=8).float() / y.numel()
    assert torch.allclose(freq, torch.full((8,), 1 / 8), atol=0.01)


@pytest.mark.parametrize("targets", ["last", "all"])
@pytest.mark.parametrize("n", [3, 50])
def test_copy_memoryless_baseline(n, targets):
    """The best memory-free predictor (blank before the cue, uniform over the 8 symbols during
    it) scores exactly the documented baseline."""
    t = CopyTask(n, targets=targets)
    _, y = t.batch(64, gen(3))
    logits = torch.full((64, t.readout, t.num_classes), -1e9)
    logits[:, -10:, :8] = 0.0  # uniform over the symbols on the recall steps
    if targets == "all":
        logits[:, :-10, t.blank_class] = 0.0  # certain blank elsewhere
    ce = F.cross_entropy(logits.reshape(-1, t.num_classes), y.reshape(-1))
    assert ce.item() == pytest.approx(t.baseline_loss, rel=1e-6)
    expect = math.log(8) if targets == "last" else 10 * math.log(8) / (n + 20)
    assert t.baseline_loss == pytest.approx(expect) and t.chance_loss == t.baseline_loss
    assert memoryless_copy_loss(n, targets=targets) == pytest.approx(expect)


# --------------------------------------------------------------------------- adding
@pytest.mark.parametrize("n", [2, 9, 200])
def test_adding_construction(n):
    t = AddingTask(n)
    x, y = t.batch(512, gen(4))
    assert t.length == n and t.input_size == 2 and t.output_size == 1 and t.readout == 1
    assert x.shape == (512, n, 2) and y.shape == (512, 1) and x.dtype == y.dtype == torch.float32
    values, marks = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all() and set(marks.unique().tolist()) <= {0.0, 1.0}
    half = n // 2
    assert (marks[:, :half].sum(1) == 1).all() and (marks[:, half:].sum(1) == 1).all()  # one mark per half
    i0, i1 = marks[:, :half].argmax(1), half + marks[:, half:].argmax(1)
    rows = torch.arange(512)
    torch.testing.assert_close(y[:, 0], values[rows, i0] + values[rows, i1], rtol=0, atol=0)


def test_adding_baseline_is_one_sixth():
    t = AddingTask(10)
    _, y = t.batch(200_000, gen(5))
    assert AddingTask.baseline_loss == t.baseline_loss == t.chance_loss == pytest.approx(1 / 6)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.005)  # predicting 1 is the best constant
    assert float(((y - 1) ** 2).mean()) == pytest.approx(1 / 6, rel=0.01)


# --------------------------------------------------------------------------- seeding
@pytest.mark.parametrize("task", [CopyTask(12), CopyTask(12, targets="all"), AddingTask(12)])
def test_batches_are_determined_by_the_generator(task):
    x1, y1 = task.batch(8, gen(7))
    x2, y2 = task.sample(8, gen(7))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = task.batch(8, gen(8))
    assert not torch.equal(x1, x3)
    g = gen(7)
    a, b = task.batch(8, g), task.batch(8, g)  # the stream advances
    assert torch.equal(a[0], x1) and not torch.equal(b[0], x1)
    torch.manual_seed(0)
    assert task.batch(2)[0].shape[0] == 2  # no generator: torch's global RNG


# --------------------------------------------------------------------------- registry
def test_registry():
    assert set(tasks.TASKS) >= {"copy", "adding"}
    c = get_task("copy", 30, targets="all")
    a = get_task("adding", 40)
    assert isinstance(c, CopyTask) and c.targets == "all" and isinstance(a, AddingTask) and a.n == 40
    assert (c.loss, c.objective) == ("ce_per_step", "classify") and (a.loss, a.objective) == ("mse_last", "regress")
    assert {c.loss, a.loss} == set(tasks.LOSS_KINDS)
    with pytest.raises(ValueError, match=r"task must be one of \['adding', 'copy'"):
        get_task("parity", 10)
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_task("copy")(CopyTask)


def test_invalid_parameters():
    for bad in (lambda: CopyTask(-1), lambda: CopyTask(5, targets="first"), lambda: AddingTask(1),
                lambda: AddingTask(2.5), lambda: CopyTask(3, symbols=0)):
        with pytest.raises(ValueError):
            bad()


def test_gate_ablation_wiring():
    """What studies.gate_ablation reads from a task fits what its model emits."""
    from studies import gate_ablation

    spec = gate_ablation.task_spec("copy", 6)
    x, y = spec["sample"](4, gen(0))
    assert x.shape == (4, spec["length"], spec["input_size"]) and y.shape == (4, spec["readout"])
    assert int(y.max()) < spec["num_outputs"] and spec["chance_loss"] == pytest.approx(math.log(8))
    spec = gate_ablation.task_spec("adding", 6)
    x, y = spec["sample"](4, gen(0))
    assert x.shape == (4, 6, 2) and y.shape == (4, 1) and spec["chance_loss"] == pytest.approx(1 / 6)
