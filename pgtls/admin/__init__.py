"""
The ``pgtls`` command (:mod:`~pgtls.admin.cli`): ``pgtls init`` writes a data
directory from the sample files in ``templates/`` (:mod:`~pgtls.admin.initdir`),
``pgtls client-cert`` issues client certificates, and ``pgtls check``
(:mod:`~pgtls.admin.check`) loads everything the server would and reports.
"""
