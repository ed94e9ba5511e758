"""DEV-3 model capabilities and MODE-5 / MODE-3 device-mode checks."""

from __future__ import annotations

import pytest

from ccmsec.policy.devices import (
    Feature,
    PolicyViolation,
    capabilities,
    check_capf_allowed,
    check_device_security,
    model_supports,
)


@pytest.mark.parametrize("model", ["7970", "7960", "7940"])
@pytest.mark.parametrize("mode", ["non-secure", "authenticated", "encrypted"])
def test_dev3_secure_models_support_every_mode(model, mode):
    assert model_supports(model, mode)
    check_device_security(model, mode, "mixed", ctl_exists=True)


@pytest.mark.parametrize("model", ["7912", "7910", "7905G", "7902"])
def test_dev3_image_auth_only_models_refuse_authenticated_and_encrypted(model):
    assert model_supports(model, "non-secure")
    check_device_security(model, "non-secure", "mixed", ctl_exists=True)
    for mode in ("authenticated", "encrypted"):
        assert not model_supports(model, mode)
        with pytest.raises(PolicyViolation) as err:
            check_device_security(model, mode, "mixed", ctl_exists=True)
        assert err.value.rule_id == "DEV-3" and "cannot be" in err.value.reason


def test_dev3_certificates_mic_on_7970_lsc_on_7960_7940():
    assert capabilities("7970").has(Feature.MIC)
    for model in ("7960", "7940"):
        caps = capabilities(model)
        assert caps.has(Feature.LSC) and not caps.has(Feature.MIC)
        assert caps.has(Feature.WEB_SERVER_DISABLE) and caps.has(Feature.FACTORY_RESET)
    assert capabilities("7912").features == {Feature.IMAGE_AUTH}


def test_dev3_capf_refused_for_models_without_certificates():
    for model in ("7970", "7960", "7940"):
        check_capf_allowed(model)
    for model in ("7912", "7910", "7905G", "7902"):
        with pytest.raises(PolicyViolation, match="DEV-3: model .* image authentication only"):
            check_capf_allowed(model)


def test_dev3_model_names_are_normalised_and_unknown_refused():
    assert model_supports("Cisco 7960", "encrypted")
    assert model_supports("CP-7940G", "authenticated")
    assert not model_supports("7905", "authenticated")
    with pytest.raises(PolicyViolation, match="unknown phone model"):
        model_supports("8841", "encrypted")


@pytest.mark.parametrize("mode", ["authenticated", "encrypted"])
def test_mode5_no_ctl_refuses_secure_modes_with_clear_reason(mode):
    with pytest.raises(PolicyViolation) as err:
        check_device_security("7970", mode, "mixed", ctl_exists=False)
    assert err.value.rule_id == "MODE-5"
    assert "CTL" in str(err.value)
    # Non-secure stays possible without a CTL.
    check_device_security("7970", "non-secure", "non-secure", ctl_exists=False)


def test_mode3_secure_device_needs_mixed_cluster():
    with pytest.raises(PolicyViolation) as err:
        check_device_security("7960", "encrypted", "non-secure", ctl_exists=True)
    assert err.value.rule_id == "MODE-3"
