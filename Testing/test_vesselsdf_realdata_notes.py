"""The eval table's header says how the sparse real-CT input was taken, in plain English."""

from VesselReconLib.vesselsdf.realdata import kept_slices_note


def test_kept_slices_note_uses_english_ordinals():
    # before: f"every {n}th slice" printed "every 3th slice of 151" for 3D-IRCADb's default
    assert kept_slices_note(3, 151) == "every 3rd slice of 151"
    assert kept_slices_note(2, 40) == "every 2nd slice of 40"
    assert kept_slices_note(1, 40) == "every slice of 40"
    assert kept_slices_note(4, 40) == "every 4th slice of 40"
    assert kept_slices_note(11, 40) == "every 11th slice of 40"
    assert kept_slices_note(21, 40) == "every 21st slice of 40"
