"""The anatomy of one synthetic study, as a table of primitives for ``ichprep.phantom``.

Sizes and densities follow adult head CT (mm in head coordinates: x to the patient's left, y posterior,
z up from near the floor of the middle cranial fossa; HU as measured on non-contrast scans):

* scalp (skin, subcutaneous fat, temporalis), a skull with outer and inner tables (~1,500 HU) and diploe
  (~600 HU) whose thickness varies by direction (thicker front and back), the face, neck and ears;
* the skull base: orbits (fat, globes, lenses, optic nerves), ethmoid and mastoid air cells, sphenoid,
  frontal and maxillary sinuses, the nasal cavity, petrous bones (~1,900 HU), the external ear canals;
* the brain: cerebrum with gyri and sulci (grey 36-42 HU, white 24-31 HU, CSF ~8 HU), temporal lobes in the
  middle fossae, cerebellum with folia and the brainstem in the posterior fossa, caudate, lentiform nuclei
  and thalami, lateral, third and fourth ventricles, basal cisterns, Sylvian and interhemispheric
  fissures, the falx, the dural venous sinuses (~55 HU);
* atrophy with age: wider sulci, CSF spaces and ventricles;
* mimics of blood, as often in negatives as in positives: calcified pineal gland, choroid plexus, basal
  ganglia, falx and carotid siphons, dense sinuses, bone at the skull base, the Hounsfield bar;
* hemorrhages by subtype (see ``lesions``) with their labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ichprep import lowerhead
from ichprep.phantom import N_COLUMNS, Material

__all__ = ["StudyAnatomy", "plan_study", "SUBTYPE_INDEX"]

SUBTYPE_INDEX = {"epidural": 0, "intraparenchymal": 1, "intraventricular": 2, "subarachnoid": 3, "subdural": 4}
_INF = 1e9


class _Table:
    """Rows of the primitive table, in painting order; ``add`` returns the row's index."""

    def __init__(self, scale: np.ndarray, shift: np.ndarray):
        self.rows: list[list[float]] = []
        self.scale, self.shift = scale, shift

    def add(self, c, a, *, yaw=0.0, zmin=-_INF, zmax=_INF, mat=Material.CONST, val=0.0, val2=0.0, label=-1,
            clip=-1, p=(0.0, 0.0, 0.0, 0.0, 0.0), zexp=2.0, scaled=True) -> int:
        c = np.asarray(c, float) * (self.scale if scaled else 1.0) + (self.shift if scaled else 0.0)
        a = np.asarray(a, float) * (self.scale if scaled else 1.0)
        zs = self.scale[2] if scaled else 1.0
        zmin = zmin * zs + self.shift[2] if zmin > -_INF else -_INF
        zmax = zmax * zs + self.shift[2] if zmax < _INF else _INF
        row = [*c, *np.maximum(a, 0.3), math.cos(yaw), math.sin(yaw), zmin, zmax, float(mat), val, val2,
               float(label), float(clip), *p, zexp]
        assert len(row) == N_COLUMNS
        self.rows.append(row)
        return len(self.rows) - 1

    def array(self) -> np.ndarray:
        return np.array(self.rows, np.float64)


class StudyAnatomy:
    """One study's primitives and what the series needs to cut it: the head's extent along z."""

    def __init__(self, prims: np.ndarray, z_bottom: float, z_top: float, lesions: list[dict]):
        self.prims, self.z_bottom, self.z_top, self.lesions = prims, z_bottom, z_top, lesions


def _age_atrophy(rng: np.random.Generator) -> tuple[float, float]:
    age = float(rng.choice([rng.uniform(18, 45), rng.uniform(45, 70), rng.uniform(70, 95)], p=[0.3, 0.35, 0.35]))
    atrophy = float(np.clip((age - 35.0) / 55.0, 0.0, 1.0) * rng.uniform(0.5, 1.3))
    return age, min(atrophy, 1.0)


@dataclass
class _Head:
    """One head's shape and tissue values (head coordinates before scale), shared by the painting steps."""

    ax: float = 66.0  # the cerebral vault's inner table: semi-axes and centre height
    ay: float = 84.0
    az: float = 92.0
    cz: float = 18.0
    grey: float = 38.0
    white: float = 28.0
    atrophy: float = 0.0
    tx: float = 4.0  # skull thickness across, front to back, at the top
    ty: float = 6.0
    tz: float = 5.0
    scalp: float = 5.0
    lat: float = 0.0  # slight asymmetry
    dome: float = 2.5  # the vault is flatter on top than an ellipsoid
    bone: float = 1500.0
    floor: float = 9.0  # the anterior fossa floor
    shift: float = 0.0  # midline shift by a large mass


def plan_study(rng: np.random.Generator, subtypes: list[str], version: int = 3) -> StudyAnatomy:
    """The anatomy of one head (random size, age, variants) with hemorrhages of ``subtypes``. The steps paint in
    order, each over what the earlier ones painted, and draw from ``rng`` in that order. ``version`` 3 draws the
    lower head and neck of ``ichprep.lowerhead`` (version 2's draws and table are kept as they were)."""
    s = rng.normal(1.0, 0.05) if rng.random() > 0.04 else rng.uniform(0.78, 0.9)  # a few children
    scale = np.clip(s * rng.normal(1.0, 0.035, 3), 0.72, 1.2)
    t = _Table(scale, np.zeros(3))
    age, atrophy = _age_atrophy(rng)
    h = _Head(atrophy=atrophy)
    h.grey = rng.uniform(35.0, 42.0)
    h.white = h.grey - rng.uniform(7.0, 12.0)
    h.tx, h.ty, h.tz = rng.uniform(3.0, 5.5), rng.uniform(4.0, 7.0), rng.uniform(3.5, 6.0)
    h.scalp = rng.uniform(4.0, 7.0)
    h.lat = rng.uniform(-0.02, 0.02) * h.ax
    h.dome = rng.uniform(2.2, 2.8)
    _scalp(t, h)
    _skull(rng, t, h)
    if version >= 3:
        lowerhead.below_the_cavity(rng, t, h)
    else:
        _below_the_cavity(t, h)
    cerebrum, fossa = _brain(rng, t, h, fossa_ay=40.0 if version < 3 else 35.0)
    _orbits_and_air(rng, t, h)
    for side in (-1, 1):  # deep grey nuclei
        t.add((side * 12, -18, 38), (5, 10, 10), val=h.grey - 2.0, val2=2.0)  # caudate head
        t.add((side * 22, -5, 27), (7, 16, 10), yaw=side * 0.15, val=h.grey - 3.0, val2=2.0)  # lentiform
        t.add((side * 10, 12, 27), (9, 13, 9), val=h.grey - 3.0, val2=2.0)  # thalamus
    v = 0.7 + 1.1 * atrophy * rng.uniform(0.7, 1.3)  # ventricles grow with atrophy
    lesions = _plan_lesions(rng, subtypes, h.ax, h.ay, h.az, h.cz, h.floor)
    h.shift = sum(les.get("shift", 0.0) for les in lesions)
    ventricles, third = _csf(rng, t, h, v)
    _dura_and_petrous(rng, t, h, fossa)
    _calcifications(rng, t, atrophy, age, v, h.shift)
    _paint_lesions(rng, t, lesions, cerebrum, ventricles, third, fossa, h.ax, h.ay, h.az, h.cz, h.floor, h.dome)
    z_bottom = -50.0 * scale[2]
    z_top = (h.cz + h.az + h.tz + h.scalp) * scale[2]
    return StudyAnatomy(t.array(), float(z_bottom), float(z_top), lesions)


def _scalp(t: _Table, h: _Head) -> None:
    """Skin and soft tissue, face, neck, nose, ears, subcutaneous fat, temporalis."""
    ax, ay, az, cz, tx, ty, tz, scalp = h.ax, h.ay, h.az, h.cz, h.tx, h.ty, h.tz, h.scalp
    t.add((h.lat, 5, cz), (ax + tx + scalp + 4, ay + ty + scalp, az + tz + scalp), zexp=h.dome, zmin=-40, val=38.0,
          val2=3.0)
    t.add((0, -50, -30), (56, 52, 40), zmax=2, val=42.0, val2=2.5)  # face
    t.add((0, 20, -78), (56, 58, 45), val=45.0, val2=2.5)  # neck
    t.add((0, -99, -22), (9, 15, 22), zmax=-2, val=30.0)  # nose
    for side in (-1, 1):
        t.add((side * (ax + tx + scalp + 5), 8, -10), (6, 16, 24), val=30.0)  # ears
    t.add((h.lat, 5, cz), (ax + tx + 4 + 0.6 * scalp, ay + ty + 0.6 * scalp, az + tz + 0.6 * scalp), zexp=h.dome,
          zmin=-36, val=-60.0, val2=10.0)  # subcutaneous fat
    for side in (-1, 1):
        t.add((side * (ax + tx + 2.5), -14, 18), (3.5, 36, 30), val=50.0, val2=4.0)  # temporalis


def _skull(rng, t: _Table, h: _Head) -> None:
    """Outer table, diploe, inner table; the frontal bone's thickening over the frontal sinus."""
    ax, ay, az, cz, tx, ty, tz = h.ax, h.ay, h.az, h.cz, h.tx, h.ty, h.tz
    h.bone = rng.uniform(1300.0, 1700.0)
    h.floor = rng.uniform(7.0, 11.0)
    t.add((h.lat, 5 + rng.uniform(-1.5, 1.5), cz), (ax + tx, ay + ty, az + tz), zexp=h.dome, zmin=-30, val=h.bone)
    t.add((h.lat, 5, cz), (ax + tx - 1.5, ay + ty - 1.6, az + tz - 1.6), zexp=h.dome, zmin=-28, mat=Material.DIPLOE,
          val=rng.uniform(450.0, 750.0), val2=rng.uniform(120.0, 250.0))
    t.add((0, 5, cz), (ax + 1.3, ay + 1.3, az + 1.3), zexp=h.dome, zmin=-28, val=h.bone * 0.9)
    t.add((0, -(ay + ty * 0.5), 28), (20, ty * 0.5 + 0.5, 16), val=h.bone * 0.85)


def _below_the_cavity(t: _Table, h: _Head) -> None:
    """The muscles of the neck and face, the occipital bone around the posterior fossa, the maxillary sinuses,
    the nasal cavity, the atlas and the cord."""
    t.add((0, 0, -62), (64, 84, 40), zmax=-22, val=46.0, val2=2.5)
    t.add((0, 39, -16), (61, 46, 32), zmax=-4, val=h.bone * 0.8)  # occipital bone
    t.add((0, -62, -14), (56, 40, 26), zmax=h.floor - 4, val=44.0, val2=2.5)  # the face below the anterior fossa
    for side in (-1, 1):
        t.add((side * 26, -58, -34), (16, 19, 18), zmax=-12, val=900.0)
        t.add((side * 26, -58, -34), (14.5, 17.5, 16.5), zmax=-13.5, val=-960.0, val2=8.0)
    t.add((0, -72, -30), (11, 28, 20), zmax=-10, val=-960.0, val2=8.0)  # nasal cavity
    t.add((0, -72, -30), (1.2, 26, 18), zmax=-10, val=300.0)  # septum
    for side in (-1, 1):
        t.add((side * 7, -72, -35), (3.0, 22, 5), val=40.0)  # turbinates
    t.add((0, 16, -56), (17, 15, 13), val=750.0)  # atlas and dens
    t.add((0, 19, -56), (9, 8.5, 15), val=36.0)  # the cord in its canal


def _brain(rng, t: _Table, h: _Head, fossa_ay: float = 40.0) -> tuple[int, int]:
    """The intracranial cavity: cerebrum above the anterior fossa floor, temporal lobes, posterior fossa with the
    cerebellum, clivus, brainstem. Returns the rows of the cerebrum and of the posterior fossa. ``fossa_ay``: the
    posterior fossa's half-length front to back (version 3: 35 mm, nearer the real slices' cerebellum)."""
    sulcal_depth = rng.uniform(12.0, 18.0)
    csf_surface = 0.8 + 2.2 * h.atrophy
    brain_p = (sulcal_depth, csf_surface, 0.35 + 1.1 * h.atrophy, 0.0, 0.0)
    cerebrum = t.add((0, 5, h.cz), (h.ax, h.ay, h.az), zexp=h.dome, zmin=h.floor, mat=Material.BRAIN, val=h.grey,
                     val2=h.white, p=brain_p)
    for side in (-1, 1):  # temporal lobes
        t.add((side * 39, -10, -1), (27, 38, 22), zmin=-22, yaw=side * 0.12, mat=Material.BRAIN, val=h.grey,
              val2=h.white, p=brain_p)
    fossa = t.add((0, 40, -15), (55, fossa_ay, 30), zmin=-46, zmax=h.floor + 3, mat=Material.CEREBELLUM, val=h.grey - 1,
                  val2=h.white + 3, p=(8.0, csf_surface * 0.7, 0.3 + 0.5 * h.atrophy, 0, 0))
    t.add((0, -5, -18), (11, 11, 19), val=h.bone * 0.7)  # clivus
    t.add((0, 13, -12), (13, 15, 32), zmax=14, val=h.white + 3.0, val2=2.0)  # pons and medulla
    t.add((0, 9, 12), (13, 13, 9), val=h.white + 5.0, val2=2.0)  # midbrain
    return cerebrum, fossa


def _orbits_and_air(rng, t: _Table, h: _Head) -> None:
    """Orbital roofs, orbits (fat, nerve, muscles, globes, lenses), ethmoid, sphenoid, frontal and mastoid air."""
    for side in (-1, 1):
        t.add((side * 30, -62, h.floor + 4), (20, 26, 5), val=900.0)
    orbit_z = h.floor - rng.uniform(4.0, 9.0)
    for side in (-1, 1):
        t.add((side * 31, -66, orbit_z), (19, 27, 17), yaw=side * 0.35, val=900.0)  # orbital wall
        t.add((side * 31, -67, orbit_z), (17.5, 26, 15.5), yaw=side * 0.35, val=-85.0, val2=8.0)  # fat
        t.add((side * 21, -55, orbit_z), (2.5, 15, 2.5), yaw=side * 0.5, val=32.0)  # optic nerve
        t.add((side * 45, -64, orbit_z), (2.5, 16, 3.5), yaw=side * 0.25, val=48.0)  # lateral rectus
        t.add((side * 17, -64, orbit_z), (2.5, 16, 3.5), yaw=side * 0.05, val=48.0)  # medial rectus
        t.add((side * 32, -81, orbit_z), (12, 12, 12), val=40.0)  # globe wall
        t.add((side * 32, -81, orbit_z), (10.8, 10.8, 10.8), val=10.0)  # vitreous
        t.add((side * 32, -91.5, orbit_z), (4.5, 1.8, 4.5), val=110.0)  # lens
    t.add((0, -62, orbit_z + 3), (11, 20, 13), mat=Material.AIR_CELLS, val=-920.0, val2=380.0)  # ethmoid
    if rng.random() < 0.9:
        t.add((0, -30, -6), (13, 12, 11) * rng.uniform(0.7, 1.2, 3), val=-960.0)  # sphenoid sinus
    if rng.random() < 0.85:
        f = rng.uniform(0.5, 1.3)
        t.add((0, -(h.ay + h.ty * 0.5), 28), (14 * f, h.ty * 0.35, 11 * f), val=-960.0)  # frontal sinus
    pneumatised = rng.uniform(0.6, 1.3)
    for side in (-1, 1):
        t.add((side * 52, 22, -16), (12, 13, 15) * np.array([pneumatised] * 3), mat=Material.AIR_CELLS,
              val=-900.0, val2=420.0)  # mastoid
        t.add((side * 62, 8, -14), (10, 3, 3), val=-950.0)  # external ear canal


def _csf(rng, t: _Table, h: _Head, v: float) -> tuple[list[int], int]:
    """Ventricles (the one on a mass's side compressed), cisterns, Sylvian and interhemispheric fissures, the
    falx. Returns the lateral ventricles' rows and the third ventricle's."""
    shift, atrophy = h.shift, h.atrophy
    ventricles = []
    for side in (-1, 1):
        squeeze = 0.55 if shift * side < -2 else 1.0
        ventricles.append(t.add((side * (5 + 2.5 * v) + shift, -26, 40), (3 + 2.5 * v * squeeze, 17, 10),
                                yaw=-side * 0.18, val=CSF_HU_, val2=1.0))  # frontal horn
        ventricles.append(t.add((side * (7 + 3 * v) + shift, 4, 50), (3 + 3 * v * squeeze, 27, 7 + 2 * v),
                                yaw=-side * 0.05, val=CSF_HU_, val2=1.0))  # body
        ventricles.append(t.add((side * (18 + 3 * v) + shift * 0.5, 34, 36), (4 + 3 * v * squeeze, 17, 10),
                                yaw=side * 0.55, val=CSF_HU_, val2=1.0))  # atrium and occipital horn
        t.add((side * 32, -6, 6), (1.5 + 2 * v, 14, 3 + v), yaw=side * 0.2, val=CSF_HU_)  # temporal horn
    third = t.add((shift, 2, 24), (1.0 + 2.8 * atrophy, 13, 9), val=CSF_HU_)
    t.add((0, 30, -12), (5 + 2 * atrophy, 4, 8), val=CSF_HU_)  # fourth ventricle
    t.add((0, -12, 12), (12, 8, 4), val=CSF_HU_)  # suprasellar cistern
    t.add((0, 24, 18), (7, 6, 6), val=CSF_HU_)  # quadrigeminal cistern
    t.add((0, 62, -30), (14, 8, 10), val=CSF_HU_)  # cisterna magna
    for side in (-1, 1):
        t.add((side * 38, -6, 18), (1.2 + 2.5 * atrophy, 22, 12), yaw=side * 0.75, val=CSF_HU_)  # Sylvian
        t.add((side * 11, 15, 14), (3, 12, 6), yaw=side * 0.4, val=CSF_HU_)  # ambient cistern
    fissure_w = 0.8 + 2.2 * atrophy
    for yc, zc, azf in ((-55, 35, 50), (58, 35, 50), (0, 82, 32)):
        t.add((shift * 0.5, yc, zc), (fissure_w, 38 if yc else 80, azf), val=CSF_HU_)  # interhemispheric
    falx_hu = rng.uniform(45.0, 75.0)
    for yc, zc, azf in ((-55, 38, 48), (58, 38, 48), (0, 84, 30)):
        t.add((shift * 0.5, yc, zc), (0.5, 38 if yc else 80, azf), val=falx_hu)  # falx
    return ventricles, third


def _dura_and_petrous(rng, t: _Table, h: _Head, fossa: int) -> None:
    """Dural venous sinuses (blood at ~55 HU along the inner table), petrous bones painted over the brain, and
    the Hounsfield bar (beam hardening) between them."""
    sinus = rng.uniform(48.0, 62.0)
    for zc in (10, 30, 50, 70):
        yc = (h.ay - 3) * math.sqrt(max(0.0, 1 - ((zc - h.cz) / h.az) ** 2))
        t.add((0, yc, zc), (4, 3, 11), val=sinus)  # superior sagittal sinus
    for side in (-1, 1):
        t.add((side * 36, 60, -4), (24, 4, 4), yaw=side * 0.6, val=sinus)  # transverse sinus
    for side in (-1, 1):
        t.add((side * 32, 14, -13), (9, 30, 9), yaw=side * 0.95, val=rng.uniform(1700.0, 2100.0))
    if rng.random() < 0.8:
        t.add((0, 16, -13), (26, 6, 7), mat=Material.ADD, val=-rng.uniform(6.0, 16.0), clip=fossa)


CSF_HU_ = 8.0


def _calcifications(rng, t: _Table, atrophy: float, age: float, v: float, shift: float) -> None:
    """Calcium that looks like blood in a brain window, at the rates of adult CT."""
    old = min(1.0, max(0.0, (age - 20.0) / 50.0))
    if rng.random() < 0.25 + 0.45 * old:  # pineal
        r = rng.uniform(1.5, 4.0)
        t.add((shift * 0.5, 20 + rng.uniform(-2, 2), 27 + rng.uniform(-2, 2)), (r, r * 1.2, r), val=rng.uniform(120, 500))
    if rng.random() < 0.2 + 0.5 * old:  # choroid plexus in the atria
        for side in (-1, 1):
            if rng.random() < 0.9:
                r = rng.uniform(1.5, 4.0)
                t.add((side * (18 + 3 * v) + shift * 0.5, 34, 37), (r * 1.3, r, r), val=rng.uniform(90, 350))
    if rng.random() < 0.05 + 0.12 * old:  # basal ganglia
        for side in (-1, 1):
            r = rng.uniform(1.0, 2.5)
            t.add((side * 20, -3, 26), (r, r * 1.5, r), val=rng.uniform(90, 250))
    if rng.random() < 0.05 + 0.15 * old:  # falx plaques
        for _ in range(int(rng.integers(1, 4))):
            t.add((shift * 0.5, rng.uniform(-60, 60), rng.uniform(35, 80)), (1.2, rng.uniform(3, 9), rng.uniform(2, 6)),
                  val=rng.uniform(150, 600))
    if rng.random() < 0.1 + 0.35 * old:  # carotid siphons
        for side in (-1, 1):
            r = rng.uniform(1.0, 2.2)
            t.add((side * 16, -16, rng.uniform(-4, 6)), (r, r * 2.0, r * 1.5), val=rng.uniform(150, 600))


def _plan_lesions(rng, subtypes: list[str], ax, ay, az, cz, floor) -> list[dict]:
    """Where each hemorrhage is and how it looks (head coordinates before scale)."""
    out = []
    for st in subtypes:
        les: dict = {"subtype": st}
        if st == "subdural":
            phase = rng.choice(["acute", "subacute", "chronic", "mixed"], p=[0.7, 0.12, 0.06, 0.12])
            les.update(hu={"acute": rng.uniform(52, 82), "subacute": rng.uniform(32, 48),
                           "chronic": rng.uniform(12, 26), "mixed": rng.uniform(40, 65)}[phase], phase=str(phase))
            side = rng.choice([-1.0, 1.0])
            les.update(side=side, direction=(0.0 if side > 0 else math.pi) + rng.uniform(-0.7, 0.7),
                       thickness=float(rng.choice([rng.uniform(3.0, 7.0), rng.uniform(7.0, 20.0)], p=[0.25, 0.75])),
                       width=rng.uniform(0.5, 1.2), zc=rng.uniform(25, 70), zh=rng.uniform(20, 45))
            les["shift"] = -side * max(0.0, les["thickness"] - 6.0) * 0.5
        elif st == "epidural":
            side = rng.choice([-1.0, 1.0])
            les.update(hu=rng.uniform(55, 85), side=side,
                       direction=(0.0 if side > 0 else math.pi) + rng.uniform(-0.6, 0.6),
                       thickness=rng.uniform(4, 13), length=rng.uniform(16, 32), zc=rng.uniform(15, 55),
                       zh=rng.uniform(10, 22))
            les["shift"] = -side * max(0.0, les["thickness"] - 6.0) * 0.5
        elif st == "intraparenchymal":
            where = rng.choice(["ganglia", "thalamus", "lobar", "cerebellum"], p=[0.35, 0.15, 0.4, 0.1])
            side = rng.choice([-1.0, 1.0])
            r = float(rng.choice([rng.uniform(3, 8), rng.uniform(8, 22)], p=[0.3, 0.7]))
            if where == "ganglia":
                c = (side * 22, -5 + rng.uniform(-6, 6), 27 + rng.uniform(-4, 6))
            elif where == "thalamus":
                c = (side * 11, 12, 27)
            elif where == "cerebellum":
                c = (side * 20, 44, -18)
                r = min(r, 13.0)
            else:
                th = rng.uniform(0, 2 * math.pi)
                zc = rng.uniform(floor + 12, cz + 55)
                k = math.sqrt(max(0.05, 1 - ((zc - cz) / az) ** 2))
                depth = rng.uniform(0.55, 0.8)
                c = (ax * k * depth * math.cos(th), 5 + ay * k * depth * math.sin(th), zc)
                side = 1.0 if c[0] > 0 else -1.0
            les.update(hu=rng.uniform(55, 85), where=str(where), centre=c, radius=r, side=side,
                       edema=rng.uniform(1.2, 1.6))
            les["shift"] = -side * max(0.0, r - 12.0) * 0.4
        elif st == "intraventricular":
            les.update(hu=rng.uniform(45, 75), cast=bool(rng.random() < 0.3), level=rng.uniform(-6, 4))
        else:  # subarachnoid
            les.update(hu=rng.uniform(55, 80), pattern=str(rng.choice(["basal", "convexity", "fissure"], p=[0.45, 0.4, 0.15])),
                       direction=rng.uniform(0, 2 * math.pi), zc=rng.uniform(floor + 10, cz + 60))
        out.append(les)
    return out


def _paint_lesions(rng, t: _Table, lesions: list[dict], cerebrum: int, ventricles: list[int], third: int,
                   fossa: int, ax, ay, az, cz, floor, dome: float) -> None:
    for les in lesions:
        st = les["subtype"]
        label = SUBTYPE_INDEX[st]
        if st == "subdural":
            t.add((0, 5, cz), (ax, ay, az), zexp=dome, zmin=floor, mat=Material.CRESCENT, val=les["hu"], label=label,
                  p=(les["thickness"], les["width"], les["zc"] * t.scale[2], les["zh"] * t.scale[2],
                                    les["direction"]))
        elif st == "epidural":
            d = les["direction"]
            zc = les["zc"]
            k = math.sqrt(max(0.05, 1 - ((zc - cz) / az) ** 2))
            c = (ax * k * math.cos(d) * 0.98, 5 + ay * k * math.sin(d) * 0.98, zc)
            t.add(c, (les["thickness"], les["length"], les["zh"]), yaw=d, val=les["hu"], val2=4.0, label=label,
                  clip=cerebrum)
        elif st == "intraparenchymal":
            c, r = np.array(les["centre"]), les["radius"]
            clip = fossa if les["where"] == "cerebellum" else cerebrum
            t.add(c, (r * les["edema"],) * 3, val=rng.uniform(14, 22), val2=2.0, clip=clip)  # oedema
            for _ in range(int(rng.integers(1, 4))):  # a lobulated clot
                off = rng.normal(0, r * 0.25, 3)
                t.add(c + off, r * rng.uniform(0.6, 1.0, 3), yaw=rng.uniform(0, math.pi), val=les["hu"],
                      val2=3.0, label=label, clip=clip)
        elif st == "intraventricular":
            for k in ventricles + [third]:
                if les["cast"] or rng.random() < 0.6:
                    row = t.rows[k]
                    level = -_INF if les["cast"] else les["level"]
                    t.add(row[0:3], row[3:6], yaw=math.atan2(row[7], row[6]), mat=Material.FILL_CSF, val=les["hu"],
                          val2=22.0, label=label, p=(level, 0, 0, 0, 0), scaled=False)
        else:
            hu = les["hu"]
            if les["pattern"] == "basal":
                t.add((0, -2, 12), (40, 32, 14), mat=Material.FILL_CSF, val=hu, val2=22.0, label=label,
                      p=(-_INF, 0, 0, 0, 0))
            elif les["pattern"] == "fissure":
                t.add((0, rng.uniform(-50, 50), les["zc"]), (6, 40, 25), mat=Material.FILL_CSF, val=hu, val2=22.0,
                      label=label, p=(-_INF, 0, 0, 0, 0))
            else:
                d, zc = les["direction"], les["zc"]
                k = math.sqrt(max(0.05, 1 - ((zc - cz) / az) ** 2))
                c = (ax * k * math.cos(d) * 0.9, 5 + ay * k * math.sin(d) * 0.9, zc)
                t.add(c, (rng.uniform(14, 30),) * 2 + (rng.uniform(10, 22),), mat=Material.FILL_CSF, val=hu,
                      val2=22.0, label=label, p=(-_INF, 0, 0, 0, 0))
