"""The course's own tooling, not its lessons: the ``mpcourse`` command (:mod:`~mpcourse.course.cli`),
chapter authoring (:mod:`~mpcourse.course.authoring`), student notebooks (:mod:`~mpcourse.course.student`),
verification (:mod:`~mpcourse.course.verify`) and recording a machine's results (:mod:`~mpcourse.course.record`).
"""
