"""The command line: commands, enrolment of custom labels, analysis and plots."""
