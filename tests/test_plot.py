"""`maskdpo plot`: the figure drawn from a run's metrics.jsonl, its title, and runs with nothing to plot."""

import json

import matplotlib
import pytest

matplotlib.use("Agg")

from maskdpo.cli import main  # noqa: E402
from maskdpo.train.plot import metrics_figure, plot_run, read_metrics  # noqa: E402

# The reference: each panel's title and the metrics it draws, with their legend labels.
EXPECTED_PANELS = {
    "loss": [("loss", None)],
    "reward accuracy": [("rewards/accuracy", None)],
    "reward margin": [("rewards/margin", None)],
    "rewards": [("rewards/chosen", "chosen"), ("rewards/rejected", "rejected")],
    "learning rate": [("lr", None)],
}


def record(step, loss, accuracy, chosen, rejected, lr):
    return {"step": step, "epoch": 0, "loss": loss, "rewards/chosen": chosen, "rewards/rejected": rejected,
            "rewards/accuracy": accuracy, "rewards/margin": chosen - rejected, "kept_fraction/chosen": 0.88,
            "kept_fraction/rejected": 0.78, "pairs": 8.0, "lr": lr, "tokens": 1221, "tokens_per_s": 8108.3,
            "seconds": 0.15}


RECORDS = [record(1, 0.69, 0.375, 1e-06, 3e-07, 0.0005), record(2, 0.62, 0.5, 0.02, -0.01, 0.001),
           record(3, 0.55, 0.75, 0.05, -0.04, 0.00075), record(4, 0.41, 1.0, 0.11, -0.09, 0.00025)]


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "tiny-run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (run / "config.yaml").write_text("model:\n  path: /models/llama-3.1-8b\n  attention: auto\ndata:\n  pairs: bundled\n")
    return run


def file_values(run, key):
    """The metric's values as the file holds them: read here, not through maskdpo."""
    return [json.loads(line)[key] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_each_panel_draws_the_file_values_of_its_metrics(run_dir):
    fig = metrics_figure(read_metrics(run_dir), "a title")
    assert [ax.get_title() for ax in fig.axes] == list(EXPECTED_PANELS)
    steps = file_values(run_dir, "step")
    for ax, (title, metrics) in zip(fig.axes, EXPECTED_PANELS.items()):
        lines = ax.get_lines()
        assert len(lines) == len(metrics), title
        for line, (key, label) in zip(lines, metrics):
            assert list(line.get_xdata()) == steps
            assert list(line.get_ydata()) == file_values(run_dir, key), (title, key)
            assert line.get_label() == label if label else line.get_label().startswith("_")  # "_": no legend entry
        labels = [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []
        assert labels == [label for _, label in metrics if label], title
        assert ax.get_xlabel() == "step"
    assert fig.get_suptitle() == "a title"


def test_plot_run_writes_a_png_titled_with_the_run_and_its_model(run_dir, monkeypatch):
    import maskdpo.train.plot as plot

    titles = []
    monkeypatch.setattr(plot, "metrics_figure", lambda records, title: titles.append(title) or metrics_figure(records, title))
    out = plot_run(run_dir)
    assert out == run_dir / "metrics.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
    assert "tiny-run" in titles[0] and "/models/llama-3.1-8b" in titles[0]


@pytest.mark.parametrize("config", [None, "model:\n  path: null\ndata:\n  pairs: bundled\n", "data:\n  pairs: bundled\n"])
def test_a_run_without_a_model_path_is_titled_random_init(run_dir, monkeypatch, config):
    import maskdpo.train.plot as plot

    if config is None:
        (run_dir / "config.yaml").unlink()
    else:
        (run_dir / "config.yaml").write_text(config)
    titles = []
    monkeypatch.setattr(plot, "metrics_figure", lambda records, title: titles.append(title) or metrics_figure(records, title))
    plot_run(run_dir)
    assert "tiny-run" in titles[0] and "random init" in titles[0]


@pytest.mark.parametrize("content", ["", "\n\n", '{"note": "started"}\n'])
def test_a_run_with_no_steps_is_refused_before_drawing(run_dir, content):
    (run_dir / "metrics.jsonl").write_text(content)
    with pytest.raises(ValueError) as e:
        plot_run(run_dir)
    assert str(e.value) == f"{run_dir / 'metrics.jsonl'}: no steps yet, nothing to plot"
    assert not (run_dir / "metrics.png").exists()


def test_a_damaged_line_is_located(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:40]  # cut short, as by a kill mid-write
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl:3: not JSON") as e:
        plot_run(run_dir)
    assert str(e.value).startswith(f"{run_dir / 'metrics.jsonl'}:3: ") and "\n" not in str(e.value)
    assert not (run_dir / "metrics.png").exists()


def test_a_missing_metrics_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(tmp_path / "nowhere")


def test_the_plot_command_exits_2_with_one_line_for_an_empty_run(run_dir, capsys):
    (run_dir / "metrics.jsonl").write_text("")
    assert main(["plot", str(run_dir)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == f"error: {run_dir / 'metrics.jsonl'}: no steps yet, nothing to plot\n"
    assert not (run_dir / "metrics.png").exists()


def test_the_plot_command_prints_the_png_path(run_dir, capsys):
    assert main(["plot", str(run_dir)]) == 0
    assert capsys.readouterr().out == f"{run_dir / 'metrics.png'}\n"
    assert (run_dir / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
