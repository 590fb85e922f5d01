#!/usr/bin/env python3
import sys
from ncsniffer.coalesce import cgi_main
sys.exit(cgi_main())
