from fedrank.errors import ConfigError, InvalidUpdate


def test_config_error_names_the_field() -> None:
    err = ConfigError("k", "must lie in (0, 1], got 1.5")
    assert err.field == "k"
    assert str(err) == "k: must lie in (0, 1], got 1.5"
    assert isinstance(err, ValueError)


def test_invalid_update_carries_a_reason_code() -> None:
    err = InvalidUpdate("not_permutation", "layer fc1: index 3 appears twice")
    assert err.reason == "not_permutation"
    assert "index 3 appears twice" in str(err)
