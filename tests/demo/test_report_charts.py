"""The report's charts (``demo.charts``): an SLO line stands apart from healthy data, a
failing canary still fits, stages become bands and a rollback a red band."""

from __future__ import annotations

from canaryd.demo import charts

PLOT_ROWS = 240 - 22 - 26  # the chart's plot height in pixels


def test_the_nines_axis_puts_the_slo_well_below_a_healthy_canary() -> None:
    axis = charts.nines_axis()
    healthy, slo, failing = axis.position(100.0), axis.position(99.5), axis.position(70.0)
    assert healthy == 1.0
    assert (healthy - slo) * PLOT_ROWS > 50  # rows apart, not one pixel row as on 0-100 %
    assert 0.0 < failing < slo  # 30 % errors still on the chart, below the SLO
    linear = charts.linear_axis(50.0, 100.0, (50, 100), "%")
    assert (linear.position(100.0) - linear.position(99.5)) * PLOT_ROWS < 2  # the old chart


def test_stages_become_bands_and_a_rollback_a_red_one() -> None:
    samples = [
        (0.0, "Progressing", 1, 10),
        (5.0, "Progressing", 1, 10),
        (6.0, "Progressing", 2, 25),
        (9.0, "RollingBack", 2, 0),
        (10.0, "RolledBack", 2, 0),
        (12.0, "RolledBack", 2, 0),
    ]
    bands = charts.stage_bands(samples, {1: 10, 2: 25})
    assert [(b.label, b.start, b.end) for b in bands] == [
        ("stage 1 · 10%", 0.0, 6.0),
        ("stage 2 · 25%", 6.0, 9.0),
        ("rolled back", 9.0, 12.0),
    ]
    svg = charts.line_chart(
        "t",
        [s[0] for s in samples],
        [charts.Series("w", [float(s[3]) for s in samples], 0)],
        charts.linear_axis(0, 100, (0, 100), "%"),
        bands,
        [charts.Mark(9.0, "rollback", charts.ROLLBACK)],
    )
    assert "fill='#fde2e1'" in svg and f"stroke='{charts.ROLLBACK}'" in svg


def test_round_tops_for_the_latency_axis() -> None:
    assert [charts.nice_top(v) for v in (0.0, 96.0, 400.0, 1200.0)] == [1.0, 100.0, 500.0, 2000.0]
