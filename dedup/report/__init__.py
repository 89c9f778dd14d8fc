"""The report stage (stage): numbers computed from the stages' files, laid out by a jinja2 template
(templates/report.html.j2, autoescaped) with report.css."""
