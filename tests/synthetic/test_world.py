"""Scene sampling: object counts, unique cells and pairs, held-out pairs confined to the test split."""
from collections import Counter

from synthetic.world import COLOUR_NAMES, HELD_OUT, SHAPES, Scene, position_phrase, sample_scene


def test_held_out_pairs_cover_each_colour_and_shape_once() -> None:
    assert len(HELD_OUT) == 6
    assert Counter(c for c, _ in HELD_OUT) == Counter(COLOUR_NAMES)
    assert Counter(s for _, s in HELD_OUT) == Counter(SHAPES)


def test_scenes_respect_the_world_rules() -> None:
    counts = Counter()
    test_with_held_out = 0
    for i in range(300):
        train = sample_scene(3, "train", i)
        assert 1 <= len(train.objects) <= 4
        assert len({(o.row, o.col) for o in train.objects}) == len(train.objects)
        assert len({o.pair for o in train.objects}) == len(train.objects)
        assert not any(o.pair in HELD_OUT for o in train.objects)
        counts[len(train.objects)] += 1
        test_with_held_out += any(o.pair in HELD_OUT for o in sample_scene(3, "test", i).objects)
    assert set(counts) == {1, 2, 3, 4} and min(counts.values()) > 50  # object counts roughly uniform
    assert 100 < test_with_held_out < 200  # about half of test scenes hold a held-out pair


def test_scene_round_trips_through_dict_and_is_seeded() -> None:
    scene = sample_scene(5, "test", 7)
    assert Scene.from_dict(scene.to_dict()) == scene
    assert sample_scene(5, "test", 7) == scene
    assert any(sample_scene(6, "test", i) != sample_scene(5, "test", i) for i in range(5))


def test_position_phrases() -> None:
    assert position_phrase(0, 0) == "top left"
    assert position_phrase(1, 1) == "center"
    assert position_phrase(2, 1) == "bottom center"
