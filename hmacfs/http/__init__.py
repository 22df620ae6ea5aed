"""The HTTP side: site, channel, request, the upload state machine, answers."""
