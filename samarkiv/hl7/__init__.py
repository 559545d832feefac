"""HL7 v2 over MLLP: ADT messages that keep the master patient index
(samarkiv/identity) in step with the hospitals' registration systems.

- mllp.py: the MLLP block server (<VT> message <FS><CR>), threaded, bounded.
- er7.py: delimiters, escape sequences, MSH read before a full parse, charsets.
- message.py: parsing with hl7apy into the values used (PID, MRG); errors.
- adt.py: A01/A04/A08 demographics and identifiers, A40 merge, A24 link,
  A37 unlink, one index transaction per message.
- demographics.py: the ``hl7_demographics`` table and catalogue updates.
- ack.py: ACK with MSA AA/AE/AR and ERR segments.
- listener.py: start/stop, used by ``samarkiv serve``.
"""
