"use strict"; // TODO
