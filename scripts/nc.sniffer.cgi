#!/usr/bin/env python3
import sys
from ncsniffer.reportcgi import cgi_main
sys.exit(cgi_main())
