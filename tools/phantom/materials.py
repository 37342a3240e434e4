"""Effective linear attenuation coefficients (1/mm) for an 80 kVp beam behind ~20 cm of tissue.

From docs/phantom-anatomy.md (ICRU 44 compositions, checked against NIST tables). One
effective energy is a fair compromise for a lumbar DRR; the beam hardening it ignores is small next
to the variation between patients.
"""

from __future__ import annotations

from typing import Final

CORTICAL: Final = 0.068
CANCELLOUS: Final = 0.035
SOFT: Final = 0.0225
FAT: Final = 0.019
DISC: Final = 0.024
GAS: Final = 0.0
TITANIUM: Final = 0.38
STEEL: Final = 1.0
LEAD: Final = 5.0
