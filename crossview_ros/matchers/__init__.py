"""Model families behind one interface (base.Matcher), chosen from model.json's matching kind.

    base       the interface, its data (GroundView, Scope, PoseMatch, Heading), the registry
    retrieval  global descriptors + offset head (matching "descriptor")
    bev        dense top-down correlation with a grid-filter track (matching "bev")
    bev_grid   the bev match's numerics: scope map, priors, belief (numpy only)
"""

from crossview_ros.matchers import bev, retrieval
from crossview_ros.matchers.base import (
    MATCHERS, GroundView, Heading, Matcher, PoseMatch, Scope, check_engine_against_tiles, create_matcher,
    unused_settings,
)
from crossview_ros.matchers.bev import BevMatcher
from crossview_ros.matchers.retrieval import RetrievalMatcher

__all__ = [
    "MATCHERS", "BevMatcher", "GroundView", "Heading", "Matcher", "PoseMatch", "RetrievalMatcher", "Scope",
    "bev", "check_engine_against_tiles", "create_matcher", "retrieval", "unused_settings",
]
