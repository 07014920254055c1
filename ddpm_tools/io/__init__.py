"""Files: atomic writes, locks, hashes and JSON (:mod:`.files`), PNG images (:mod:`.png`)
and figures (:mod:`.plots`). Nothing here knows about diffusion."""
