"""The matcher interface: one family per model.json matching kind, and the settings each family owns."""

from __future__ import annotations

import dataclasses
import types

import pytest

from crossview_ros.localizer_config import LocalizerConfig
from crossview_ros.matchers import MATCHERS, BevMatcher, RetrievalMatcher, create_matcher, unused_settings
from crossview_ros.model_meta import MATCHING_KINDS, EngineError


def test_every_matching_kind_of_the_schema_has_a_matcher():
    assert set(MATCHERS) == set(MATCHING_KINDS)
    assert MATCHERS["descriptor"] is RetrievalMatcher and MATCHERS["bev"] is BevMatcher


def test_family_settings_are_config_fields_and_disjoint():
    fields = {f.name for f in dataclasses.fields(LocalizerConfig)}
    assert RetrievalMatcher.settings <= fields and BevMatcher.settings <= fields
    assert not RetrievalMatcher.settings & BevMatcher.settings
    assert {"track", "track_speed_mps", "match_prior"} <= BevMatcher.settings
    assert {"fusion", "margin_mode", "search_device"} <= RetrievalMatcher.settings


def test_unused_settings_names_only_the_other_familys_changed_settings():
    assert unused_settings(RetrievalMatcher, LocalizerConfig()) == []
    assert unused_settings(BevMatcher, LocalizerConfig()) == []
    cfg = LocalizerConfig(track=False, track_speed_mps=3.0, fusion="weighted", top_k=3, heading=True)
    assert unused_settings(RetrievalMatcher, cfg) == ["track", "track_speed_mps"]
    assert unused_settings(BevMatcher, cfg) == ["fusion"]  # top_k and heading serve both families


def test_a_model_of_an_unknown_family_is_refused_with_the_valid_kinds():
    engine = types.SimpleNamespace(meta=types.SimpleNamespace(matching="pointcloud", name="m"))
    with pytest.raises(EngineError, match=r"matching kind 'pointcloud'.*\['bev', 'descriptor'\]"):
        create_matcher(engine, None, LocalizerConfig())
