import pytest

from magnet_rt import DecodeParams
from magnet_rt.errors import InvalidParams
from magnet_rt.presets import ModelDecoding, UnknownPreset, preset_names, resolve_params


def test_defaults_are_the_release_defaults():
    p = DecodeParams()
    assert p.decoding_steps == (20, 10, 10, 10) and p.span_arrangement == "nonoverlap"
    assert p.span_scoring == "max" and p.use_sampling and p.anneal_temperature
    assert (p.temperature, p.top_p, p.top_k, p.max_cfg_coef, p.min_cfg_coef) == (3.0, 0.9, 0, 10.0, 1.0)


@pytest.mark.parametrize("kwargs, words", [
    (dict(decoding_steps=()), "decoding_steps"),
    (dict(decoding_steps=(20, 0, 10, 10)), "decoding_steps"),
    (dict(decoding_steps=(20.5, 10, 10, 10)), "decoding_steps"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(temperature=-1.0), "temperature"),
    (dict(max_cfg_coef=-0.5), "max_cfg_coef"),
    (dict(min_cfg_coef=float("inf")), "min_cfg_coef"),
    (dict(span_arrangement="zigzag"), "span_arrangement"),
    (dict(span_scoring="min"), "span_scoring"),
    (dict(top_k=-3), "top_k"),
    (dict(use_sampling="yes"), "use_sampling"),
])
def test_bad_values_raise_typed_errors_naming_the_field(kwargs, words):
    with pytest.raises(InvalidParams, match=words):
        DecodeParams(**kwargs)


def test_wrong_number_of_stages():
    with pytest.raises(InvalidParams, match="4 codebooks"):
        DecodeParams(decoding_steps=(20, 10, 10)).check_stages(4)


def test_overrides_and_unknown_fields():
    p = DecodeParams().with_overrides({"decoding_steps": [5, 1, 1, 1], "temperature": 2})
    assert p.decoding_steps == (5, 1, 1, 1) and p.temperature == 2.0
    with pytest.raises(InvalidParams, match="unknown decoding parameter"):
        DecodeParams().with_overrides({"temprature": 1.0})
    assert DecodeParams.from_dict(p.to_dict()) == p


def test_presets():
    assert {"live", "balanced", "studio", "sound"} <= set(preset_names())
    assert resolve_params("balanced").decoding_steps == (20, 5, 5, 5)
    studio = resolve_params("studio")
    assert studio.decoding_steps == (20, 10, 10, 10) and studio.span_arrangement == "stride1"
    sound = resolve_params("sound")
    assert (sound.temperature, sound.top_p, sound.max_cfg_coef, sound.min_cfg_coef) == (3.5, 0.8, 20.0, 1.0)
    live = resolve_params("live")
    assert live.decoding_steps[0] > max(live.decoding_steps[1:])
    assert resolve_params("live", {"top_p": 0.5}).top_p == 0.5
    with pytest.raises(UnknownPreset):
        resolve_params("loud")


def test_a_models_decoding_sits_between_the_presets_and_the_request():
    model = ModelDecoding({"max_cfg_coef": 3.0, "temperature": 2.5}, {"live": {"decoding_steps": [10, 2, 2, 2]}})
    balanced = resolve_params("balanced", None, model)  # the preset does not set CFG: the model's value
    assert (balanced.max_cfg_coef, balanced.temperature, balanced.decoding_steps) == (3.0, 2.5, (20, 5, 5, 5))
    assert resolve_params("sound", None, model).max_cfg_coef == 20.0  # a preset that sets it wins
    assert resolve_params("live", None, model).decoding_steps == (10, 2, 2, 2)  # the model's own live
    assert resolve_params("live", {"decoding_steps": [4, 1, 1, 1]}, model).decoding_steps == (4, 1, 1, 1)
    assert resolve_params("balanced", {"max_cfg_coef": 7}, model).max_cfg_coef == 7.0  # the request wins
    assert resolve_params("balanced") == resolve_params("balanced", None, ModelDecoding())  # released models
    assert model.default_params.max_cfg_coef == 3.0 and model.default_params.decoding_steps == (20, 10, 10, 10)
    assert ModelDecoding.from_config(model.to_config()) == model
    with pytest.raises(InvalidParams, match="unknown decoding parameter"):
        ModelDecoding({"cfg": 3})
    with pytest.raises(UnknownPreset, match="loud"):
        ModelDecoding({}, {"loud": {"top_p": 0.5}})
    with pytest.raises(InvalidParams, match="top_p"):
        ModelDecoding({}, {"live": {"top_p": 0.0}})
    for bad in ({"steps": {}}, {"presets": []}, ["defaults"], {"presets": {"live": 3}}):
        with pytest.raises(InvalidParams, match="decoding"):
            ModelDecoding.from_config(bad)
