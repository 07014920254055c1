"""K-step schedules: the exact DP driver on a cost table (:mod:`.optimize`), schedule
specs such as ``dp:32`` or ``even:16`` (:mod:`.spec`) and the schedule file
(:mod:`.schedule_file`)."""
