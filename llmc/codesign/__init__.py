"""Hardware co-design: per-layer rooflines (:mod:`llmc.codesign.roofline`) for every target."""
