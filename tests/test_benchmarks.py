"""The benchmark harness itself: FLOP formulas against torch's FLOP counter, the CSV schema, failure
rows, Ctrl-C, plots and summary, the suite registry and its one entry point. Tiny shapes; no test
looks at a time."""
import ast
import csv
import json
import os
import subprocess
import sys
import types

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bench_model, competitors, flops, harness, plots, report, run, suites
from reformer_kernels import reference

CPU = torch.device("cpu")


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def tiny_config(**overrides):
    config = dict(dtype=torch.float64, batch=1, heads=2, head_dim=8, seq_len=64, n_hashes=2, chunk_len=16, causal=False)
    config.update(overrides)
    return config


# ---- FLOP formulas ---------------------------------------------------------------------------

def test_dense_attention_formula_counts_both_products():
    q, k, v = (torch.randn(2, 3, 40, 8, dtype=torch.float64) for _ in range(3))
    explicit = counted(lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ v)
    assert flops.dense_attention(2, 3, 40, 8, causal=False) == explicit
    assert flops.dense_attention(2, 3, 40, 8, causal=True) == explicit / 2


@pytest.mark.parametrize("n_buckets", [8, (4, 2)])
def test_hashing_formula_matches_the_reference(n_buckets):
    vectors = torch.randn(1, 2, 64, 8, dtype=torch.float64)
    rotation_size = n_buckets if isinstance(n_buckets, int) else sum(n_buckets)
    rotations = torch.randn(2, 8, 3, rotation_size // 2, dtype=torch.float64)
    assert counted(lambda: reference.hash_vectors(vectors, rotations, n_buckets)) == flops.hashing(1, 2, 64, 8, 3, n_buckets)


@pytest.mark.parametrize("n_hashes", [1, 2])
def test_chunked_attention_formula_matches_the_lsh_reference(n_hashes):
    qk, v = (torch.randn(1, 2, 64, 8, dtype=torch.float64) for _ in range(2))
    sorted_idx = torch.stack([torch.randperm(n_hashes * 64) for _ in range(2)])[None]
    counted_flops = counted(lambda: reference.lsh_attention(
        qk, v, sorted_idx, n_hashes=n_hashes, chunk_len=16, n_chunks_before=1, n_chunks_after=0, causal=False))
    assert counted_flops == flops.chunked_attention(1, 2, 64, 8, 16, 1, 0, n_hashes)


def test_chunked_attention_formula_matches_the_local_reference():
    q, k, v = (torch.randn(2, 1, 48, 8, dtype=torch.float64) for _ in range(3))
    counted_flops = counted(lambda: reference.local_attention(q, k, v, chunk_len=16, n_chunks_before=1, n_chunks_after=1, causal=False))
    assert counted_flops == flops.chunked_attention(2, 1, 48, 8, 16, 1, 1)
    # One chunk or less: full attention.
    assert flops.chunked_attention(2, 1, 12, 8, 16, 1, 1) == flops.dense_attention(2, 1, 12, 8, causal=False)


def test_backward_counts_a_gradient_product_per_operand():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    layer = torch.nn.Linear(7, 3, bias=False, dtype=torch.float64)
    assert counted(lambda: layer(x).sum().backward()) == flops.with_backward(flops.linear(5, 7, 3))


def test_lsh_layer_formula_matches_the_layer_we_time():
    config = tiny_config()
    prepared = competitors.ours_lsh_layer(config, CPU, "reference")
    assert counted(prepared.forward) == prepared.fwd_flops
    assert counted(prepared.train_step) == prepared.train_flops


def test_reformer_lm_formula_matches_transformers_forward():
    config = dict(bench_model.shape("tiny", CPU), dtype=torch.float32, layers=2, causal=True)
    prepared = bench_model.transformers_lm(config, CPU)
    with torch.no_grad():
        assert counted(prepared.forward) == prepared.fwd_flops
    # The model has one LSH layer (local, lsh), and hashing has no gradient.
    hashed = flops.hashing(1, config["heads"], config["seq_len"], config["head_dim"], config["n_hashes"], competitors.n_buckets_for(config))
    assert prepared.train_flops == flops.with_backward(prepared.fwd_flops, prepared.fwd_flops - hashed)


# ---- competitors: every one builds and runs on a tiny configuration ----------------------------

LAYER_BUILDERS = {
    "ours": lambda config: competitors.ours_lsh_layer(config, CPU, "auto"),
    "transformers": lambda config: competitors.transformers_lsh_layer(config, CPU),
    "reformer-pytorch": lambda config: competitors.reformer_pytorch_lsh_layer(config, CPU),
    "sdpa": lambda config: competitors.sdpa_layer(config, CPU, n_projections=2),
    "ours-local": lambda config: competitors.ours_local_layer(config, CPU, "auto"),
    "transformers-local": lambda config: competitors.transformers_local_layer(config, CPU),
    "local_attention": lambda config: competitors.local_attention_package_layer(config, CPU),
}


@pytest.mark.parametrize("name", sorted(LAYER_BUILDERS))
def test_layer_competitors_run_on_the_same_shapes(name):
    config = tiny_config(dtype=torch.float32, causal=True)
    prepared = LAYER_BUILDERS[name](config)
    with torch.no_grad():
        out = prepared.forward()
    assert out.shape == (1, 64, 16)
    prepared.train_step()
    assert prepared.fwd_flops > 0 and prepared.train_flops > prepared.fwd_flops


def test_transformers_takes_factorized_buckets():
    config = tiny_config(dtype=torch.float32, seq_len=256, chunk_len=4)
    assert isinstance(competitors.n_buckets_for(config), tuple)
    with torch.no_grad():
        assert competitors.transformers_lsh_layer(config, CPU).forward().shape == (1, 256, 16)


def test_competitors_see_the_same_inputs():
    config = tiny_config()
    hidden_a, _ = competitors._hidden_states(config, CPU)
    hidden_b, _ = competitors._hidden_states(config, CPU)
    hidden_c, _ = competitors._hidden_states(tiny_config(seq_len=32), CPU)
    assert torch.equal(hidden_a, hidden_b) and not torch.equal(hidden_a[:, :32], hidden_c)


def test_a_backend_without_the_kernel_is_not_available(monkeypatch):
    from reformer_kernels import backends

    monkeypatch.setattr(backends, "implemented_ops", lambda: {"reference": ["lsh_hash"], "cpu": []})
    monkeypatch.setattr(backends, "status", lambda: {"reference": (True, ""), "cpu": (True, "")})
    with pytest.raises(harness.NotAvailable, match="no kernel for lsh_hash"):
        competitors.require_kernels("lsh_hash", "cpu")


def test_auto_rows_say_what_auto_ran(monkeypatch):
    from reformer_kernels import backends

    assert competitors.backend_label("lsh_layer", "cpu", CPU) == "cpu"
    monkeypatch.setattr(backends, "select", lambda op, device, backend: ("reference" if op == "lsh_hash_sort" else "cpu", None))
    assert competitors.backend_label("lsh_layer", "auto", CPU) == "auto=cpu+reference"
    assert competitors.backend_label("local_layer", "auto", CPU) == "auto=cpu"


def test_a_missing_peer_is_reported_missing():
    with pytest.raises(harness.MissingPeer, match="no_such_peer_package"):
        competitors.peer("no_such_peer_package")


# ---- the harness: rows, failures, schema, Ctrl-C, plots, summary --------------------------------

def fake_case(competitor, build, seq_len=64, op="fake_op"):
    return harness.Case("fake", op, competitor, "pytorch", tiny_config(dtype=torch.float32, seq_len=seq_len), build, tokens=seq_len)


def working(seq_len=64):
    x = torch.randn(seq_len, 8, requires_grad=True)
    return harness.Prepared(lambda: (x * 2).sum(), lambda: (x * 2).sum().backward(), fwd_flops=1e3, train_flops=3e3)


def failing():
    raise RuntimeError("the peer broke\nover two lines")


def out_of_memory():
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")


FAST = harness.Settings(device=CPU, warmup=0, repeats=5, max_call_s=60.0)


def test_rows_record_failures_and_the_suite_goes_on():
    cases = [
        fake_case("transformers", working),
        fake_case("broken", failing),
        fake_case("reformer_kernels", lambda: (_ for _ in ()).throw(harness.NotAvailable("no kernel yet"))),
        fake_case("oom", out_of_memory, seq_len=64),
        fake_case("oom", working, seq_len=128),
        fake_case("after", working),
    ]
    handed = []
    rows = harness.run_cases(cases, FAST, handed.append, progress=False)
    assert handed == rows and [row["status"] for row in rows] == ["ok", "error", "not available", "oom", "skipped", "ok"]
    assert rows[1]["error"] == "RuntimeError: the peer broke over two lines"
    assert rows[2]["error"] == "no kernel yet"
    assert "out of memory at seq_len 64" in rows[4]["error"]
    ok = rows[0]
    assert ok["fwd_ms_min"] <= ok["fwd_ms"] <= ok["fwd_ms_max"] and ok["fwd_bwd_ms_min"] <= ok["fwd_bwd_ms"] <= ok["fwd_bwd_ms_max"]
    assert ok["tokens_per_s"] > 0 and ok["tflops"] >= 0 and ok["peak_mem_mb"] != ""
    for row in rows[1:5]:
        assert row["fwd_ms"] == "" and row["tflops"] == ""


def test_speedups_compare_with_transformers_on_the_same_configuration():
    rows = [dict.fromkeys(harness.COLUMNS, "") for _ in range(3)]
    for row, competitor, ms, length in zip(rows, ("transformers", "ours", "ours"), (30.0, 10.0, 10.0), (64, 64, 128)):
        row.update(suite="s", op="o", competitor=competitor, fwd_ms=ms, fwd_bwd_ms=ms * 2, seq_len=length, status="ok")
    harness.add_speedups(rows)
    assert rows[0]["speedup_vs_transformers"] == 1.0 and rows[1]["speedup_vs_transformers"] == 3.0
    assert rows[2]["speedup_vs_transformers"] == ""


def test_fast_calls_are_repeated_until_they_add_up():
    calls = []
    assert len(harness.time_ms(lambda: calls.append(1), CPU, warmup=2, repeats=5)) == 5 and len(calls) == 7
    # A call this fast never adds up to an hour: the repeats stop at 20x.
    assert len(harness.time_ms(lambda: None, CPU, warmup=0, repeats=5, min_total_s=3600.0)) == 100


def test_peak_memory_sees_torch_cpu_allocations():
    def allocate():
        a = torch.ones(1024, 1024)  # 4 MiB
        b = a * 2  # 4 MiB more while a is alive
        return b.sum()

    assert 8 * 2**20 <= harness.peak_memory_bytes(allocate, CPU) < 9 * 2**20


def test_peak_memory_counts_frees_of_what_the_first_call_left():
    """The measured call frees the 4 MiB the previous call kept (as a training step frees the previous
    gradients): the profiler saw that block allocated, so the free lowers the running sum, and the
    peak is the 8 MiB temporary (12 MiB if the free were left out)."""
    kept = []

    def step():
        kept.clear()
        kept.append(torch.ones(1024, 1024))
        return torch.ones(2048, 1024).sum()

    assert 8 * 2**20 <= harness.peak_memory_bytes(step, CPU) < 9 * 2**20


# What torch's profiler, kineto and c10 print when a benchmark measures CPU memory carelessly.
NOISE = ("USDT", "profiler_start", "profiler_stop", "gpuGetDeviceCount", "Memory block of unknown size")


def test_a_measured_training_case_prints_no_profiler_noise():
    """One case through harness.measure in a fresh process (the profiler's logs appear once per
    process): a model trained with AdamW and zero_grad(set_to_none=True), whose second step frees the
    first one's gradients, times and memory measured; nothing on stdout or stderr but the row."""
    script = """
import json, torch
from benchmarks import harness
model = torch.nn.Linear(256, 256)
optimizer = torch.optim.AdamW(model.parameters())
x = torch.randn(512, 256)
def step():
    optimizer.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    optimizer.step()
case = harness.Case("fake", "train", "ours", "pytorch", {}, lambda: harness.Prepared(lambda: model(x), step))
row = harness.measure(case, harness.Settings(device=torch.device("cpu"), warmup=1, repeats=3))
print(json.dumps([row["status"], row["peak_mem_mb"]]))
"""
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=report.ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    status, peak_mb = json.loads(done.stdout.strip().splitlines()[-1])
    assert status == "ok" and peak_mb > 0
    output = done.stdout + done.stderr
    assert not [word for word in NOISE if word in output], output


def register_fake_suite(monkeypatch, cases) -> None:
    """A cases suite named "fake" in the registry, whose module lists ``cases()``."""
    monkeypatch.setitem(sys.modules, "fake_suite_module", types.SimpleNamespace(cases=lambda size, device: cases()))
    monkeypatch.setitem(suites.SUITES, "fake", suites.Suite("fake", suites.CASES, "a fake suite", "fake_suite_module"))


def test_results_go_to_an_untracked_folder_unless_out_says_otherwise(tmp_path, monkeypatch):
    register_fake_suite(monkeypatch, lambda: [fake_case("transformers", working)])
    monkeypatch.setattr(report, "OUT", str(tmp_path / "bench-results"))
    assert run.main(["--suite", "fake", "--size", "tiny", "--device", "cpu", "--no-progress"]) == 0
    assert os.path.exists(os.path.join(report.default_out_dir(CPU), "fake.csv"))
    assert report.default_out_dir(CPU) == str(tmp_path / "bench-results" / report.device_dir_name(CPU))


def test_the_default_results_folder_is_ignored_by_git():
    """So that `make bench` never modifies committed files (benchmarks/results/ holds those)."""
    done = subprocess.run(["git", "check-ignore", "-q", os.path.join(report.OUT, "any-device", "ops.csv")], cwd=report.ROOT)
    assert done.returncode == 0
    assert not os.path.relpath(report.OUT, report.ROOT).startswith(os.path.relpath(report.RESULTS, report.ROOT))


def test_csv_json_plots_and_summary(tmp_path):
    rows = harness.run_cases([fake_case("transformers", working, seq_len=n) for n in (64, 128)]
                             + [fake_case("ours", failing), fake_case("fast", working, seq_len=128)], FAST, lambda row: None, progress=False)
    harness.add_speedups(rows)
    env = report.environment(CPU)
    report.write_suite(str(tmp_path), "fake", rows, env)
    with open(tmp_path / "fake.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == harness.COLUMNS
        read = list(reader)
    assert [row["status"] for row in read] == ["ok", "ok", "error", "ok"]
    assert float(read[0]["fwd_ms"]) > 0 and int(read[1]["seq_len"]) == 128
    data = json.loads((tmp_path / "fake.json").read_text())
    assert data["rows"][2]["error"].startswith("RuntimeError") and data["environment"]["torch"] == torch.__version__
    for key in ("device", "cpu", "gpu", "torch", "triton", "cuda", "reformer_kernels_commit"):
        assert data["environment"][key]

    paths = plots.plot_suite(rows, "fake", str(tmp_path))
    names = sorted(os.path.basename(path) for path in paths)
    assert names == ["fake_fake_op_full_float32_memory.png", "fake_fake_op_full_float32_time.png", "fake_speedup.png"]
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    summary = open(report.write_summary(str(tmp_path))).read()
    assert "| op | competitor | backend |" in summary and "fake_op ours:pytorch: error: RuntimeError" in summary
    assert "![fake_speedup.png](fake_speedup.png)" in summary


def test_accuracy_rows_get_an_accuracy_plot(tmp_path):
    rows = [dict.fromkeys(harness.COLUMNS, "") for _ in range(3)]
    for row, n_hashes in zip(rows, (1, 2, 4)):
        row.update(op="duplication_accuracy", competitor="transformers", backend="pytorch", n_hashes=n_hashes, seq_len=32,
                   accuracy=0.5, status="ok")
    assert [os.path.basename(p) for p in plots.plot_suite(rows, "quality", str(tmp_path))] == ["quality_duplication_accuracy_accuracy.png"]


def test_ctrl_c_keeps_finished_rows(tmp_path, monkeypatch, capsys):
    def interrupt():
        raise KeyboardInterrupt

    register_fake_suite(monkeypatch, lambda: [
        fake_case("transformers", working), fake_case("ours", interrupt), fake_case("never", working)])
    code = run.main(["--suite", "fake", "--size", "tiny", "--device", "cpu", "--out", str(tmp_path), "--no-progress"])
    assert code == 130
    with open(tmp_path / "fake.csv") as f:
        assert [row["competitor"] for row in csv.DictReader(f)] == ["transformers"]
    assert (tmp_path / "summary.md").exists() and (tmp_path / "fake_fake_op_full_float32_time.png").exists()
    assert "interrupted" in capsys.readouterr().err


def test_list_names_every_registered_suite_and_the_default_set(capsys):
    assert run.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(suites.SUITES)
    # What `make bench` runs: DESIGN.md's four questions, in order.
    assert suites.DEFAULT == ("ops", "model", "scaling", "quality")
    assert [line.split()[0] for line in lines if line.endswith("(default)")] == list(suites.DEFAULT)


def test_every_registered_suite_has_what_its_kind_runs():
    for suite in suites.SUITES.values():
        assert callable(getattr(suite.load(), "cases" if suite.kind == suites.CASES else "main")), suite.name


BENCHMARKS = os.path.join(report.ROOT, "benchmarks")


def test_benchmark_modules_import_no_entry_point_no_other_suite_and_no_private_name():
    """No import cycle: the suites are below the entry point (run.py) and beside each other; what
    modules share is public."""
    for name in sorted(os.listdir(BENCHMARKS)):
        if not name.endswith(".py") or name == "__main__.py":
            continue
        with open(os.path.join(BENCHMARKS, name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported = [node.module] if node.module else [alias.name for alias in node.names]
                assert not {"run", "__main__"} & set(imported), f"{name} imports the entry point"
                assert not (name.startswith("bench_") and any(m.startswith("bench_") for m in imported)), f"{name} imports a suite"
                assert not [alias.name for alias in node.names if alias.name.startswith("_")], f"{name}: {ast.dump(node)}"


def test_cli_bench_runs_the_entry_point_in_the_checkout(tmp_path, monkeypatch):
    """`reformer-kernels bench ARGS` is `python -m benchmarks ARGS` in the checkout, in a process of its
    own (this one's sys.path untouched); a relative --out is the caller's folder."""
    from reformer_kernels import cli

    monkeypatch.chdir(tmp_path)
    path = list(sys.path)
    argv = ["bench", "--suite", "lsh_phases", "--lengths", "256", "--repeats", "1", "--peak-gflops", "100", "--out", "results"]
    assert cli.main(argv) == 0
    assert (tmp_path / "results" / "lsh_phases.csv").exists() and sys.path == path


def test_cli_bench_outside_a_checkout_says_so(tmp_path, monkeypatch):
    from reformer_kernels import cli

    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "reformer_kernels" / "cli.py"))
    with pytest.raises(SystemExit, match="source checkout"):
        cli.main(["bench", "--list"])


def test_every_cases_suite_lists_cases_for_every_size():
    for suite in suites.SUITES.values():
        if suite.kind != suites.CASES:
            continue
        for size in ("tiny", "small", "full"):
            cases = suite.load().cases(size, CPU)
            assert cases and all(set(case.config) >= {"dtype", "batch", "heads", "head_dim", "seq_len"} for case in cases), suite.name


def test_reversible_rows_time_both_modes_and_measure_memory_without_timing(monkeypatch):
    """bench_reversible's in-process rows: both modes of our model timed; the live-memory op is untimed."""
    from benchmarks import bench_reversible

    monkeypatch.setattr(bench_reversible, "SHAPE", dict(bench_reversible.SHAPE, heads=2, head_dim=8, chunk_len=16))
    rows = bench_reversible.interleaved_rows(64, 2, 1)
    assert [(r["competitor"], r["op"], r["status"]) for r in rows] == [
        (name, bench_reversible.INTERLEAVED_OP, "ok") for name, _ in (bench_reversible.REVERSIBLE, bench_reversible.PLAIN)
    ]
    assert all(r["fwd_bwd_ms"] > 0 for r in rows)
    memory = bench_reversible.worker(bench_reversible.LIVE_MEMORY_OP, *bench_reversible.REVERSIBLE, 64, 2, 3)
    assert memory["status"] == "ok" and memory["fwd_bwd_ms"] == "" and memory["peak_mem_mb"] != ""


def test_reversible_on_cuda_without_a_gpu_is_a_clear_error(monkeypatch, capsys):
    from benchmarks import bench_reversible

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        run.main(["--suite", "reversible", "--device", "cuda"])
    assert stop.value.code == 2
    assert "--device cuda but torch.cuda.is_available() is False" in capsys.readouterr().err


def test_bench_generate_writes_its_csv(tmp_path, monkeypatch):
    from benchmarks import bench_generate

    monkeypatch.setattr(bench_generate, "SIZES", {"small": [70]})
    monkeypatch.setattr(bench_generate, "BATCHES", (2,))
    monkeypatch.setattr(bench_generate, "NEW_TOKENS", 3)
    assert run.main(["--suite", "generate", "--repeats", "1", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "generate.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["generator"] for r in rows} == {"ours", "transformers"}
    ours = next(r for r in rows if r["generator"] == "ours")
    assert float(ours["ms_per_token"]) > 0 and float(ours["cache_mb_per_layer"]) > 0 and float(ours["growth_vs_first"]) == 1.0
    with open(tmp_path / "generate_ms_per_token.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # Runs measured apart (a case alone in its process) merge into one CSV and plot.
    for name in ("ours", "transformers"):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=bench_generate.COLUMNS)
            writer.writeheader()
            writer.writerows(r for r in rows if r["generator"] == name)
    merged = tmp_path / "merged"
    assert run.main(["--suite", "generate", "--merge", str(tmp_path / "ours.csv"), str(tmp_path / "transformers.csv"), "--out", str(merged)]) == 0
    with open(merged / "generate.csv") as f:
        assert sorted(tuple(r.items()) for r in csv.DictReader(f)) == sorted(tuple(r.items()) for r in rows)
    assert (merged / "generate_ms_per_token.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="--merge .* is not a file"):
        run.main(["--suite", "generate", "--merge", str(tmp_path / "none.csv")])
    (tmp_path / "other.csv").write_text("op,ms\nsort,1.0\n")
    with pytest.raises(SystemExit, match="other.csv.*not a generate.csv of this version"):
        run.main(["--suite", "generate", "--merge", str(tmp_path / "other.csv")])


def test_lsh_phases_table_has_every_phase_and_rates(tmp_path, capsys):
    assert run.main(["--suite", "lsh_phases", "--lengths", "256", "--repeats", "1", "--peak-gflops", "100", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "lsh_phases.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["phase"] for row in rows] == [
        "projections fwd", "hash", "sort", "attention fwd", "attention bwd", "projections bwd", "module step",
    ]
    for row in rows:
        assert float(row["ms"]) > 0
        if row["phase"] != "sort":
            assert float(row["gflop_per_s"]) > 0
            assert float(row["fraction_of_peak"]) == pytest.approx(float(row["gflop_per_s"]) / 100, abs=2e-3)
    with open(tmp_path / "lsh_phases.json") as f:
        assert json.load(f)["environment"]["peak_gflops"] == 100
    assert "sum of phases" in capsys.readouterr().out


def test_real_configs_is_listed_by_the_entry_point():
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--list"], capture_output=True, text=True, cwd=report.ROOT, check=True)
    assert "real_configs" in [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def test_real_configs_tiny_writes_every_column_and_every_row_is_ok(tmp_path):
    """The cnp-shaped tiny size (2 layers, L = 256, 1 repeat), ours and transformers (the patched
    transformers row runs the same code path as the other two, each in its fresh process)."""
    from benchmarks import bench_real_configs

    assert run.main(["--suite", "real_configs", "--size", "tiny", "--competitors", "reformer_kernels", "transformers",
                     "--peak-gflops", "100", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "real_configs.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == bench_real_configs.COLUMNS
    assert [(r["op"], r["competitor"]) for r in rows] == [
        (op, name) for op in ("train", "infer") for name in ("reformer_kernels", "transformers")]
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert (row["model"], row["seq_len"], row["layers"], row["dtype"]) == ("cnp", "256", "2", "fp32")
        assert float(row["step_ms"]) > 0 and float(row["peak_rss_mb"]) >= 0 and float(row["minflt_per_step"]) >= 0
        assert float(row["sys_s_per_step"]) >= 0
        assert float(row["fraction_of_peak"]) == pytest.approx(float(row["gflop_per_s"]) / 100, abs=2e-3)
        assert float(row["time_ratio_vs_transformers"]) > 0
    assert {float(r["time_ratio_vs_transformers"]) for r in rows if r["competitor"] == "transformers"} == {1.0}
    with open(tmp_path / "real_configs.json") as f:
        assert json.load(f)["environment"]["peak_gflops"] == 100


def test_traffic_report_adds_up(tmp_path):
    """The traffic suite (no GPU: launches recorded): per op, its kernels' bytes and FLOPs add up
    to its total and the ops' totals to the configuration's; fp32 moves more than bf16 and TF32
    does not change the bytes; the minimum is a lower bound; every estimate is positive; the LSH
    forward kernel at a tile-exact shape executes exactly flops.chunked_attention's products; the
    forwards of local attention and of one-round LSH attention (cnp's) move their minimum (inputs
    read in place, out written by the attention kernel)."""
    from benchmarks import bench_traffic

    assert run.main(["--suite", "traffic", "--configs", "cnp", "--seq-len", "1024", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "traffic.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == bench_traffic.COLUMNS
    totals = {}
    for precision in ("bf16", "fp32", "fp32-tf32"):
        mine = [r for r in rows if r["precision"] == precision]
        ops = [r for r in mine if r["kernel"] == "total" and r["op"] != "total"]
        (grand,) = [r for r in mine if r["op"] == "total"]
        for column in ("bytes", "flops", "estimate_us", "launches"):
            for op in ops:
                kernels = [r for r in mine if r["op"] == op["op"] and r["kernel"] != "total"]
                # each row is rounded to 0.1 B / 0.01 us
                assert sum(float(r[column]) for r in kernels) == pytest.approx(float(op[column]), abs=0.05 * len(kernels) + 0.05), (op, column)
            assert sum(float(r[column]) for r in ops) == pytest.approx(float(grand[column]), abs=0.05 * len(ops) + 0.05), column
        for r in ops + [grand]:
            assert float(r["estimate_us"]) > 0 and 0 < float(r["min_bytes"]) <= float(r["bytes"]), r
            assert float(r["read_bytes"]) + float(r["write_bytes"]) == pytest.approx(float(r["bytes"]), abs=0.2)
        totals[precision] = {r["op"]: r for r in ops + [grand]}
    for op, bf16 in totals["bf16"].items():
        # the sort moves integers only; at 1K tokens the LM head's backward moves more in bf16, whose
        # larger tiles leave fewer programs and so split its sums into more fp32 partial gradients
        if op not in ("bucket_sort", "linear_cross_entropy bwd", "total"):
            assert float(bf16["bytes"]) < float(totals["fp32"][op]["bytes"]), op
        assert totals["fp32-tf32"][op]["bytes"] == totals["fp32"][op]["bytes"]
        assert float(totals["fp32-tf32"][op]["estimate_us"]) <= float(totals["fp32"][op]["estimate_us"]), op
    for precision in totals:
        for op in ("lsh_attention fwd", "local_attention fwd"):
            assert totals[precision][op]["bytes"] == totals[precision][op]["min_bytes"], (precision, op)
    config = bench_traffic.CONFIGS["cnp"]
    (attention,) = [r for r in rows if r["precision"] == "bf16" and r["kernel"] == "attention_fwd_kernel" and r["op"] == "lsh_attention fwd"]
    useful = flops.chunked_attention(1, 1, 1024, config.head_dim, config.lsh_chunk_len, 1, 0, config.n_hashes) / 1024
    assert float(attention["flops"]) == useful


def test_real_configs_dtypes_picks_the_bf16_autocast_rows(tmp_path):
    """--dtypes replaces the size's dtypes: the tiny size's train and infer rows under bf16 autocast."""
    assert run.main(["--suite", "real_configs", "--size", "tiny", "--competitors", "reformer_kernels", "--dtypes",
                     "bf16-autocast", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "real_configs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["op"], r["dtype"], r["status"]) for r in rows] == [
        ("train", "bf16-autocast", "ok"), ("infer", "bf16-autocast", "ok")], [r["error"] for r in rows]
