"""How a third-party plugin tests itself with the studio's conformance kit."""

from studio.conformance import parametrize_with_checks


@parametrize_with_checks(["pca"])
def test_pca_conforms(backend, check):
    check(backend)
