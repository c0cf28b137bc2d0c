"""The synthetic generator: deterministic, planted personas, noise exactly as documented."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.core.config import GenerateConfig, NoiseConfig
from jobs.synthetic import PERSONAS, generate, generate_events


def small(tmp_path: Path, **changes: object) -> GenerateConfig:
    settings: dict[str, object] = {
        "n_users": 300,
        "n_days": 3,
        "output_dir": str(tmp_path / "raw"),
        "ground_truth_path": str(tmp_path / "truth" / "personas.csv"),
        **changes,
    }
    return dataclasses.replace(GenerateConfig(), **settings)  # type: ignore[arg-type]


def read_jsonl(paths: list[str]) -> list[str]:
    return [line for p in paths for line in Path(p).read_text().splitlines()]


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    a = generate(small(tmp_path / "a"))
    b = generate(small(tmp_path / "b"))
    assert [Path(f).name for f in a.files] == [Path(f).name for f in b.files]
    assert all(
        Path(x).read_bytes() == Path(y).read_bytes() for x, y in zip(a.files, b.files, strict=True)
    )
    c = generate(small(tmp_path / "c", seed=7))
    assert Path(c.files[0]).read_bytes() != Path(a.files[0]).read_bytes()


def test_ground_truth_lists_every_user_with_a_known_persona(tmp_path: Path) -> None:
    config = small(tmp_path)
    result = generate(config)
    rows = [line.split(",") for line in Path(result.ground_truth_path).read_text().splitlines()]
    assert rows[0] == ["user_id", "persona"]
    personas = dict(rows[1:])
    assert len(personas) == config.n_users + config.noise.bot_users
    names = {p.name for p in PERSONAS[: config.n_personas]}
    assert set(personas.values()) == names | {"bot"}
    counts = Counter(personas.values())
    assert max(counts[n] for n in names) - min(counts[n] for n in names) <= 1  # balanced
    users = {json.loads(line)["user"] for line in read_jsonl(list(result.files)) if _ok(line)}
    assert users <= set(personas)
    assert not Path(result.ground_truth_path).is_relative_to(Path(config.output_dir))


def _ok(line: str) -> bool:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    return "user" in record


def test_planted_noise_is_exactly_what_the_files_hold(tmp_path: Path) -> None:
    config = small(tmp_path)
    result = generate(config)
    lines = read_jsonl(list(result.files))
    assert len(lines) == result.n_lines_written
    parsed, malformed = [], 0
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            malformed += 1
    assert malformed == result.n_malformed_planted > 0
    drifted = [
        r
        for r in parsed
        if "user" not in r
        or "event_time" not in r
        or r.get("type") == "wishlist"
        or str(r.get("event_time", "")).startswith("1970")
        or isinstance(r.get("price"), str)
    ]
    assert len(drifted) == result.n_schema_drift_planted > 0
    clean = [r for r in parsed if r not in drifted]
    ids = Counter(r["event_id"] for r in clean)
    assert len(ids) == result.n_events_clean
    assert sum(c - 1 for c in ids.values()) == result.n_duplicates_planted > 0
    assert (
        result.n_lines_written
        == result.n_events_clean
        + result.n_duplicates_planted
        + result.n_malformed_planted
        + result.n_schema_drift_planted
    )


def test_late_events_arrive_in_later_files_and_files_are_out_of_order(tmp_path: Path) -> None:
    result = generate(small(tmp_path))
    late, displaced = 0, 0
    for path in result.files:
        arrival_day = Path(path).name[len("events-") : len("events-") + 10]
        times = [json.loads(x).get("event_time", "") for x in read_jsonl([path]) if _ok(x)]
        times = [t for t in times if t and not t.startswith("1970")]
        late += sum(t[:10] < arrival_day for t in times)
        displaced += sum(a > b for a, b in itertools.pairwise(times))
    assert late > 0 and displaced > 0


def test_bots_are_far_faster_than_humans(tmp_path: Path) -> None:
    events, truth = generate_events(small(tmp_path))
    persona = dict(
        zip(truth.column("user_id").to_pylist(), truth.column("persona").to_pylist(), strict=True)
    )
    users = np.array(events.column("user").to_pylist())
    ts = events.column("ts_ms").to_numpy()
    rates = {}
    for kind in ("bot", "human"):
        mask = np.array([(persona[u] == "bot") == (kind == "bot") for u in users])
        gaps = np.diff(ts[mask])[np.diff(ts[mask]) > 0]
        rates[kind] = np.median(gaps)
    assert rates["bot"] < 2_500 and rates["human"] > 10 * rates["bot"]


def test_personas_prefer_different_categories(tmp_path: Path) -> None:
    config = small(tmp_path, n_users=600, noise=NoiseConfig(off_persona_rate=0.1))
    events, truth = generate_events(config)
    persona = dict(
        zip(truth.column("user_id").to_pylist(), truth.column("persona").to_pylist(), strict=True)
    )
    by_persona: dict[str, Counter] = {}
    for user, category in zip(
        events.column("user").to_pylist(), events.column("category_code").to_pylist(), strict=True
    ):
        if category is not None and persona[user] != "bot":
            by_persona.setdefault(persona[user], Counter())[category] += 1
    top = {p: c.most_common(1)[0][0] for p, c in by_persona.items()}
    assert len(set(top.values())) == config.n_personas
    for p, counts in by_persona.items():
        share = sum(
            n for c, n in counts.items() if c in dict((x.name, x.categories) for x in PERSONAS)[p]
        ) / sum(counts.values())
        assert share > 0.8, (p, share)  # about 90% planted, 10% off-persona noise


def test_all_formats_hold_the_same_events_and_gzip_reads(tmp_path: Path) -> None:
    noiseless = NoiseConfig(
        duplicate_rate=0, malformed_rate=0, schema_drift_rate=0, late_rate=0, out_of_order_rate=0
    )
    result = generate(
        small(tmp_path, formats=("jsonl", "csv", "parquet"), compress=True, noise=noiseless)
    )
    assert set(result.lines_per_format.values()) == {result.n_events_clean}
    jsonl = [f for f in result.files if f.endswith(".jsonl.gz")]
    lines = [x for f in jsonl for x in gzip.decompress(Path(f).read_bytes()).decode().splitlines()]
    csv_rows = sum(
        len(gzip.decompress(Path(f).read_bytes()).decode().splitlines()) - 1
        for f in result.files
        if f.endswith(".csv.gz")
    )
    parquet_rows = sum(pq.read_metadata(f).num_rows for f in result.files if f.endswith(".parquet"))
    assert len(lines) == csv_rows == parquet_rows == result.n_events_clean


def test_default_config_yields_over_200k_events() -> None:
    events, _ = generate_events(GenerateConfig())
    assert events.num_rows >= 200_000


def test_invalid_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_personas"):
        generate_events(small(tmp_path, n_personas=99))
    with pytest.raises(ValueError, match="unknown format"):
        generate(small(tmp_path, formats=("xml",)))


def test_stage_run_generates_the_configured_data_and_reports_it(tmp_path: Path) -> None:
    from jobs import generate as stage
    from jobs.core.config import AppConfig

    config = dataclasses.replace(AppConfig(), generate=small(tmp_path))
    result = stage.run(config, run_id="t")
    direct = generate(small(tmp_path / "direct"))
    assert [Path(f).read_bytes() for f in result.files] == [
        Path(f).read_bytes() for f in direct.files
    ]
    assert result.summary() == (
        f"generated {result.n_lines_written:,} raw records "
        f"({result.n_events_clean:,} clean events) in {len(result.files)} files"
    )


def test_personas_data_file_is_typed_and_checked() -> None:
    from jobs.synthetic.personas import CATEGORIES, load_world, parse_world

    world = load_world()
    assert world.personas == PERSONAS and world.diurnal.shape == (24,)
    assert all(c in CATEGORIES for p in PERSONAS for c in p.categories)
    assert all(isinstance(p.events_per_session, float) for p in PERSONAS)
    persona = {
        "name": "x",
        "categories": ["no.such.category"],
        "queries": ["q"],
        **dict.fromkeys(("p_cart", "p_purchase", "p_remove", "p_search", "sessions_per_day"), 0.5),
        **dict.fromkeys(("events_per_session", "gap_median_s", "price_preference"), 1.0),
    }
    data = {"categories": {}, "personas": [persona], "diurnal": [1] * 24}
    with pytest.raises(ValueError, match="unknown categories"):
        parse_world(data)
