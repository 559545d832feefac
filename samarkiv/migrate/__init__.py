"""Migration of legacy archives: named, resumable, idempotent, verified jobs.

- job.py: the job, its plan (studies, instances) and progress, kept in the index
- sources/: where objects come from (DIMSE C-FIND + C-MOVE/C-GET over our own requestor,
  requestor.py; DICOMweb QIDO-RS + WADO-RS, multipart.py; folders and DICOMDIR)
- runner.py: parallel pulls with retries and the throttle (throttle.py)
- deferred.py: the migration's pulls answered before their grouped commit (C-GET here, C-MOVE in serve)
- mapping.py: issuer of patient ID and attribute coercion on the way in
- verify.py, report.py: comparison with the source; CSV and HTML reports
- cli.py: ``samarkiv migrate add|plan|run|status|verify|report|list``
"""
