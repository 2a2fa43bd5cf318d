"""Identity / view / expression balance ablations: spec, subsets, priors and few-shot evaluations.

One module per concern::

    spec       the YAML spec: named configurations of one image budget (identities x views x
               expressions per identity), validated on load; ``default.yaml`` ships with the package
"""
