"""`segscale report`: the HTML page is rendered in headless Chromium (Debian's chromium package) and checked for
its charts, console errors and requests beyond the file itself."""

from __future__ import annotations

import base64
import fnmatch
import os
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pandas as pd
import pytest
from frames import D1, D2, ROOT

from segscale.analyst import report as report_module
from segscale.analyst.sql import run_query
from segscale.cli import main

ALL_CHARTS = {"tier-pyramid", "rfm-heatmap", "rfm-segments", "lifecycle-funnel", "churn-distribution",
              "churn-risk-by-tier", "churn-calibration", "churn-lift", "clv-distribution", "clv-by-tier",
              "migration-matrix", "retention-plan", "retention-outcomes", "uplift-history", "tier-economics",
              "region-tiers", "quarantine-reasons", "monitoring-drift", "monitoring-calibration"}
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]


@dataclass
class Rendered:
    charts: dict[str, int]  # data-chart name → the image's natural width in the browser (0: not decoded)
    missing: list[str]  # data-missing of the notes saying an input is not there
    console_errors: list[str]
    requests: list[str]  # every URL the page asked for besides itself and its data: images
    text: str


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        message = "Debian's chromium is not installed (apt-get install chromium); the report is not rendered"
        if os.environ.get("REQUIRE_CHROMIUM"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def render(browser, page_file: Path, screenshot: Path | None = None) -> Rendered:
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    url = page_file.resolve().as_uri()
    page.on("request", lambda r: requests.append(r.url) if r.url != url and not r.url.startswith("data:") else None)
    page.goto(url, wait_until="load")
    charts = page.evaluate("""Object.fromEntries([...document.querySelectorAll('figure[data-chart]')].map(
        f => [f.dataset.chart, f.querySelector('img') ? f.querySelector('img').naturalWidth : 0]))""")
    missing = page.evaluate("[...document.querySelectorAll('[data-missing]')].map(e => e.dataset.missing)")
    text = page.inner_text("body")
    if screenshot is not None:
        page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return Rendered(charts, missing, errors, requests, text)


def problems(rendered: Rendered, expected_charts: set[str]) -> list[str]:
    """What is wrong with a rendered report: a chart absent or not decoded, a console error, a network request."""
    found = [f"chart {name} is missing" for name in sorted(expected_charts - set(rendered.charts))]
    found += [f"chart {name} did not render" for name, width in rendered.charts.items() if width == 0]
    found += [f"console error: {message}" for message in rendered.console_errors]
    found += [f"request outside the file: {url}" for url in rendered.requests]
    return found


def report(warehouse: str, out: Path, *extra: str) -> int:
    return main(["report", "--warehouse", warehouse, "--out", str(out), *extra])


def test_the_report_renders_every_chart_offline(two_snapshots, browser, tmp_path, capsys):
    settings, _, _, _ = two_snapshots
    out = tmp_path / "report.html"
    assert report(settings.paths.warehouse, out, "--snapshot", D2.isoformat()) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    rendered = render(browser, out, tmp_path / "report.png")
    assert problems(rendered, ALL_CHARTS) == []
    assert set(rendered.charts) == ALL_CHARTS and rendered.missing == []
    assert (tmp_path / "report.png").stat().st_size > 100_000  # a full page, not a blank one
    # The figures are the warehouse's: headline customers, the tiers with their labels, the models, the budget.
    customers = run_query(settings.paths.warehouse, "SELECT count(*) AS n FROM customer_scores",
                          snapshot=D2).column("n")[0].as_py()
    assert f"{customers:,}\ncustomers" in rendered.text
    for tier, label in (("high_value", "高价值"), ("potential", "潜力"), ("regular", "普通")):
        assert f"{tier} {label}" in rendered.text
    assert "models:/segscale_churn/1" in rendered.text and "models:/segscale_clv/1" in rendered.text
    assert "Budget 2,000" in rendered.text and f"value tier on {D1}" not in rendered.text  # the chart is an image
    assert rendered.text.count(D2.isoformat()) >= 2
    # The first snapshot's plan, measured by the second's run: its treated and control groups per tier.
    assert "plan(s) measured" in rendered.text and D1.isoformat() in rendered.text
    assert f"Changes since {D1}" in rendered.text
    # Trust: the CLV bands, the account managers' queue with reasons, D1's scores backtested by D2's run.
    assert "median P10" in rendered.text and "customers in the queue" in rendered.text
    assert re.search(r"churn v1:\s+(retrain|keep)", rendered.text)


def test_the_default_snapshot_is_the_latest(two_snapshots, tmp_path):
    settings, _, _, _ = two_snapshots
    assert report(settings.paths.warehouse, tmp_path / "r.html") == 0
    assert f"Customer base on {D2}" in (tmp_path / "r.html").read_text()


def test_sections_without_their_input_say_so(two_snapshots, browser, tmp_path):
    settings, _, _, _ = two_snapshots
    # The first snapshot has no previous one; a copy of the warehouse without the plan tables and without the
    # MLflow store beside it has no retention plan and no holdout evaluation to show.
    copy = tmp_path / "copy" / "wh"
    shutil.copytree(settings.paths.warehouse, copy)
    for name in ("retention_plan", "retention_summary", "tier_economics"):
        shutil.rmtree(copy / name)
    out = tmp_path / "first.html"
    assert report(str(copy), out, "--snapshot", D1.isoformat()) == 0
    rendered = render(browser, out)
    assert sorted(rendered.missing) == ["churn-holdout", "economics", "migration", "outcomes", "retention"]
    assert problems(rendered, ALL_CHARTS - {"migration-matrix", "retention-plan", "churn-calibration", "churn-lift",
                                            "retention-outcomes", "uplift-history", "tier-economics",
                                            "monitoring-calibration"}) == []
    assert f"no plan had been measured by {D1}" in rendered.text
    assert f"no previous snapshot before {D1}" in rendered.text
    assert "table retention_summary is not published" in rendered.text
    assert "no MLflow store at" in rendered.text
    assert not (tmp_path / "copy" / "mlflow.db").exists()  # the report created nothing


def test_the_browser_check_catches_a_broken_chart_and_a_console_error(two_snapshots, browser, tmp_path):
    settings, _, _, _ = two_snapshots
    out = tmp_path / "report.html"
    assert report(settings.paths.warehouse, out, "--snapshot", D2.isoformat()) == 0
    page = out.read_text()
    broken = base64.b64encode(b"not a png").decode()
    page = re.sub(r'(data-chart="clv-by-tier"><img [^>]*src="data:image/png;base64,)[^"]+', rf"\g<1>{broken}", page)
    page = page.replace("</body>", "<script>console.error('boom')</script></body>")
    out.write_text(page)
    found = problems(render(browser, out), ALL_CHARTS)
    assert "chart clv-by-tier did not render" in found and "console error: boom" in found


def test_an_unpublished_snapshot_is_refused_and_nothing_is_written(two_snapshots, tmp_path, capsys):
    settings, _, _, _ = two_snapshots
    out = tmp_path / "report.html"
    assert report(settings.paths.warehouse, out, "--snapshot", "2023-01-31") == 2
    err = capsys.readouterr().err
    assert "snapshot 2023-01-31 is not published" in err and f"{D1}, {D2}" in err
    assert list(tmp_path.iterdir()) == []
    assert report(str(tmp_path / "nowhere"), out) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()


def test_a_report_of_one_customer_renders_with_every_tier_and_the_runs_warnings(spark, browser, tmp_path, capsys):
    """The smallest base: no model can be trained, so the report says why, shows the empty tiers, and draws
    every chart it has data for."""
    customers = {"customer_id": ["only"], "signup_date": ["2024-01-02"]}
    transactions = {"transaction_id": ["t1", "t2"], "customer_id": ["only", "only"],
                    "ts": ["2024-03-01T10:00:00Z", "2024-05-01T10:00:00Z"], "amount": [20.0, 35.5],
                    "transaction_type": ["purchase", "purchase"]}
    for name, columns in (("customers", customers), ("transactions", transactions)):
        (tmp_path / "in" / name).mkdir(parents=True)
        pd.DataFrame(columns).to_csv(tmp_path / "in" / name / "part-0.csv", index=False)
    warehouse = str(tmp_path / "wh")
    assert main(["run", "--input", str(tmp_path / "in"), "--warehouse", warehouse, "--snapshot-date", "2024-06-30"],
                spark=spark) == 0
    assert "churn risk (no churn model: see models below)" in capsys.readouterr().out
    out = tmp_path / "one.html"
    assert report(warehouse, out) == 0
    rendered = render(browser, out)
    assert problems(rendered, {"tier-pyramid", "rfm-heatmap", "rfm-segments", "lifecycle-funnel"}) == []
    for tier, label in (("high_value", "高价值"), ("potential", "潜力"), ("regular", "普通")):
        assert f"{tier} {label}" in rendered.text
    assert "churn model skipped" in rendered.text and "clv model skipped" in rendered.text
    assert "the retention plan of this snapshot is empty" in rendered.text


# ---- the templates, without a warehouse -----------------------------------------------------------------------------
def test_templates_escape_what_comes_from_the_data():
    html = report_module.render(
        "notes.html.j2", command="run", started_at=pd.Timestamp("2024-06-30 08:00:00"),
        outcomes={"churn": {"version": None, "status": "skipped", "skipped": "only <b>1</b> buyer"}},
        warnings=["<script>alert('x')</script> & more"])
    assert "<script>" not in html and "<b>" not in html
    assert "<li>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more</li>" in html
    assert "<td>churn</td><td>—</td><td>only &lt;b&gt;1&lt;/b&gt; buyer</td>" in html
    assert "at 2024-06-30 08:00:00 UTC" in html


def test_a_template_naming_a_value_its_builder_did_not_give_fails():
    with pytest.raises(jinja2.UndefinedError, match="matrix"):
        report_module.render("migration.html.j2")


def test_every_section_has_a_template_and_the_wheel_ships_every_template():
    templates = ROOT / "src" / "segscale" / "analyst" / "templates"
    names = {path.name for path in templates.iterdir()}
    assert {f"{key}.html.j2" for key, _, _ in report_module.SECTIONS} | {"report.html.j2", "macros.html.j2"} == names
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = package_data["segscale.analyst"]
    assert all(any(fnmatch.fnmatch(f"templates/{name}", glob) for glob in shipped) for name in names)
