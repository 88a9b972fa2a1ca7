"""How a third-party plugin tests itself with the studio's conformance kit: one test per check, with ids like
`pca:digits-check_roundtrip`; checks its capabilities do not call for (train, text, img2img) are skipped with
the reason. A check known to fail would go in `expected_failed_checks={"check_name": "why"}` (reported XFAIL)."""

from studio.conformance import parametrize_with_checks


@parametrize_with_checks([("pca", "digits")])
def test_pca_conforms(backend, check):
    check(backend)
