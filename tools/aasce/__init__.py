"""The real AP spine radiographs with clinicians' vertebra corner landmarks (AASCE 2019 training split).

Real films are the only ground truth of how the appliance reads a patient. This package reads the set
(`dataset`), turns corner landmarks into network-grid targets (`targets`), and fixes the patient-level
split into a development part (training, calibration) and a held-out part that training never touches.
Provenance and licence: ../shared/data/README.md (reported Open Data Commons PDDL 1.0, not checked
against the original SpineWeb page: development and evaluation data).
"""
