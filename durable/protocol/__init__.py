"""Protocol access: the only code that speaks SQL (:mod:`store`, :mod:`migrate`), and the
vocabulary every layer above shares: records, errors, retry strategies, reason classes, JSON in
and out (:mod:`codec`), and where the database is (:mod:`dsn`, :mod:`embedded`)."""
