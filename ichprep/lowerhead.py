"""Version 3 of the synthetic head below the cranial cavity: the face and neck as a low CT cut shows them.

Version 2 drew the lower head as a few uniform blocks of muscle (46 HU) around the atlas, and the occipital bone
as a solid ellipsoid, so its lowest cuts were an even grey oval with a ring, or a white disk. Real cuts at the
foramen magnum, the atlas and the maxillary sinuses (45% of the real sample's slices lie at the skull base) are
the most varied of the head: fat under the skin and between the muscles (dark in a brain window), the mandible's
rami with the masseter and pterygoid muscles, the parotid glands, the air of the pharynx, the hard palate and the
teeth, and the occipital bone as a plate around the foramen magnum. A model that never saw them read them as
bleeds (benchmarks/transfer.py; docs/realism.md). Coordinates and units as ``ichprep.anatomy``
(mm, x to the patient's left, y posterior, z up; HU); ``t`` is its primitive table, ``h`` its head.
"""

from __future__ import annotations

import math

__all__ = ["below_the_cavity"]


def below_the_cavity(rng, t, h) -> None:
    """Paint the lower head and neck of version 3 (replaces version 2's ``_below_the_cavity``): skin, subcutaneous
    fat, neck muscles with fat planes, the occipital plate and the foramen magnum, face, sinuses, nasal cavity,
    pharynx, jaw, atlas and cord. Draws from ``rng`` in a fixed order."""
    bone = h.bone
    fat = rng.uniform(3.0, 10.0)  # subcutaneous fat: thin in some heads, a centimetre in others
    t.add((0, 0, -62), (64, 84, 40), zmax=-22, val=46.0, val2=2.5)  # skin
    t.add((0, 0, -62), (62.5, 82.5, 39), zmax=-22, val=-95.0, val2=8.0)  # subcutaneous fat
    t.add((0, 1, -62), (62.5 - fat, 82.5 - fat, 39), zmax=-22, val=48.0, val2=3.0)  # muscle
    t.add((0, 62, -60), (1.6, 40, 34), zmax=-22, val=-80.0, val2=8.0)  # nuchal ligament's fat
    for side in (-1, 1):  # fat planes between the posterior neck muscles, from the spine out to the skin
        for angle in (0.35, 0.85, 1.35):
            a = angle + rng.normal(0.0, 0.12)
            t.add((side * 42 * math.sin(a), 22 + 42 * math.cos(a), -60), (rng.uniform(1.2, 2.5), 42, 34),
                  yaw=side * a, zmax=-24, val=-85.0, val2=8.0)
        t.add((side * 42, -3, -56), (22, rng.uniform(1.5, 3.0), 24), zmax=-26, val=-85.0, val2=8.0)  # face | neck
    # The occipital bone: a plate over the neck muscles, open at the foramen magnum (the cavity fills it later)
    thick = rng.uniform(5.0, 10.0)
    t.add((0, 39, -16), (61, 46, 32), zmax=-4, val=bone * 0.8)
    t.add((0, 41, -16 - thick), (61 - 0.6 * thick, 46 - 0.6 * thick, 32), zmax=-4, val=48.0, val2=3.0)
    t.add((0, 21, -44), (21, 23, 6), val=bone * 0.75)  # the rim of the foramen magnum
    t.add((0, 20, -44), (13, 15, 7), val=10.0)  # cisterna magna: CSF around the medulla
    # Below the middle cranial fossae (version 2 left the skull's solid floor there): muscle, fat and the
    # sphenoid's plates; the fossa floor itself stays as bone above zmax
    t.add((0, -30, -40), (58, 28, 20), zmax=-26, val=48.0, val2=3.0)
    for side in (-1, 1):
        t.add((side * 30, -26, -34), (10, 14, 10), val=-85.0, val2=8.0)  # infratemporal fat
    t.add((0, 0, -36), (52, 3.5, 12), zmax=-24, val=bone * 0.75)  # the clivus and petrous bases before the fossa
    # The face below the anterior fossa, its fat under the skin and in the cheeks
    t.add((0, -62, -14), (56, 40, 26), zmax=h.floor - 4, val=44.0, val2=2.5)
    t.add((0, -62, -16), (54.5, 38.5, 25), zmax=-6, val=-90.0, val2=8.0)
    t.add((0, -60, -16), (54.5 - fat * 0.8, 38.5 - fat * 0.8, 25), zmax=-6, val=44.0, val2=3.0)
    for side in (-1, 1):
        t.add((side * 40, -52, -42), (9, 12, 14), val=-90.0, val2=8.0)  # buccal fat
    _jaw(rng, t, bone)
    for side in (-1, 1):  # maxillary sinuses (air in a bony wall, sometimes a fluid level's worth of mucosa)
        t.add((side * 26, -58, -34), (16, 19, 18), zmax=-12, val=900.0)
        t.add((side * 26, -58, -34), (14.5, 17.5, 16.5), zmax=-13.5, val=-960.0, val2=8.0)
        if rng.random() < 0.25:
            t.add((side * 26, -58, -46), (14.5, 17.5, 7), zmax=-13.5, val=rng.uniform(15.0, 40.0), val2=3.0)
    t.add((0, -72, -30), (11, 28, 20), zmax=-10, val=-960.0, val2=8.0)  # nasal cavity
    t.add((0, -72, -30), (1.2, 26, 18), zmax=-10, val=300.0)  # septum
    for side in (-1, 1):
        t.add((side * 7, -72, -35), (3.0, 22, 5), val=40.0)  # turbinates
        t.add((side * 14, -34, -34), (1.8, 9, 13), yaw=side * 0.3, val=bone * 0.7)  # pterygoid plates
    air = rng.uniform(0.6, 1.3)  # the pharynx: wide open in some, nearly closed in others
    t.add((0, -22, -40), (10 * air, 6 * air, 12), val=-970.0, val2=8.0)  # nasopharynx
    t.add((0, -8, -64), (9 * air, 5 * air, 16), val=-970.0, val2=8.0)  # oropharynx
    t.add((0, 16, -56), (17, 15, 13), val=750.0)  # atlas and dens
    t.add((0, 19, -56), (9, 8.5, 15), val=36.0)  # the cord in its canal
    t.add((0, 10, -56), (4.5, 4.5, 12), val=900.0)  # the dens, denser than the ring


def _jaw(rng, t, bone: float) -> None:
    """Masseter, pterygoid and parotid around each mandibular ramus; the hard palate, the alveolar ridge and
    the teeth, low in the series."""
    for side in (-1, 1):
        t.add((side * 35, -16, -54), (6, 14, 16), yaw=side * 0.3, val=50.0, val2=3.0)  # medial pterygoid
        t.add((side * 22, -14, -50), (5, 10, 14), val=-85.0, val2=8.0)  # parapharyngeal fat
        t.add((side * 52, -26, -54), (7, 16, 20), yaw=side * 0.15, val=52.0, val2=3.0)  # masseter
        t.add((side * 50, 2, -50), (9, 12, 16), val=rng.uniform(-40.0, 5.0), val2=10.0)  # parotid
        t.add((side * 45, -22, -54), (4.5, 13, 22), yaw=side * 0.2, val=bone * 0.85)  # ramus
        t.add((side * 45, -22, -54), (2.2, 10.5, 20), yaw=side * 0.2, val=rng.uniform(250.0, 450.0))  # marrow
    t.add((0, -58, -50), (26, 24, 2.2), val=bone * 0.7)  # hard palate
    t.add((0, -56, -60), (28, 20, 6), zmax=-55, val=bone * 0.9)  # alveolar ridge
    t.add((0, -56, -60), (26.5, 18.5, 6.5), zmax=-55, val=2200.0)  # the teeth along it
    t.add((0, -54, -60), (22, 14, 7), zmax=-55, val=60.0, val2=3.0)  # tongue and palate inside the arch
