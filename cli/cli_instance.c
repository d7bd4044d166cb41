/* Instance verbs: create-instance, delete-instance, list-instances,
 * show-configuration, version. */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "cli.h"
#include "util.h"

static int no_positional(cli_ctx *c, int argc, char **argv, int oi)
{
	if (oi < argc)
		return cli_usage_error(c, "unexpected argument '%s'", argv[oi]);
	return 0;
}

int verb_create_instance(cli_ctx *c, int argc, char **argv)
{
	int oi, r;

	r = cli_parse(c, argc, argv, NULL, "[--instance NAME]",
	              "Create an instance: its config file (with defaults) and its state directory.",
	              NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if ((r = no_positional(c, argc, argv, oi)) < 0)
		return r;
	r = tether_instance_init(c->prog->program, c->instance_name, c->home, &c->inst, &c->err);
	if (r < 0)
		return r;
	r = tether_instance_create(c->inst, c->prog->default_config, &c->err);
	if (r < 0)
		return r;
	printf("Created %s instance '%s'\n  config: %s\n  state:  %s\n", c->prog->program,
	       c->inst->name, c->inst->config_path, c->inst->state_dir);
	printf("Next: '%s new-certificate%s%s' to generate its identity.\n", c->prog->progname,
	       c->instance_name ? " --instance " : "", c->instance_name ? c->instance_name : "");
	return 0;
}

int verb_delete_instance(cli_ctx *c, int argc, char **argv)
{
	int oi, r;

	r = cli_parse(c, argc, argv, NULL, "--instance NAME",
	              "Delete an instance: its config, its state and its identity (keys included).",
	              NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if ((r = no_positional(c, argc, argv, oi)) < 0)
		return r;
	r = tether_instance_init(c->prog->program, c->instance_name, c->home, &c->inst, &c->err);
	if (r < 0)
		return r;
	r = tether_instance_delete(c->inst, &c->err);
	if (r < 0)
		return r;
	printf("Deleted %s instance '%s'\n", c->prog->program, c->inst->name);
	return 0;
}

int verb_list_instances(cli_ctx *c, int argc, char **argv)
{
	char **names = NULL;
	int oi, r, n, i;

	r = cli_parse(c, argc, argv, NULL, "[--json]", "List the instances on this machine.",
	              NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if ((r = no_positional(c, argc, argv, oi)) < 0)
		return r;
	n = tether_instance_list(c->prog->program, c->home, &names, &c->err);
	if (n < 0)
		return n;
	if (c->json) {
		json_t *a = json_array();
		for (i = 0; i < n; i++) {
			tether_instance *in = NULL;
			if (tether_instance_init(c->prog->program, names[i], c->home, &in, NULL) == 0) {
				json_array_append_new(a, json_pack("{s:s, s:s, s:s}", "instance", in->name,
				                                   "config_path", in->config_path,
				                                   "state_dir", in->state_dir));
				tether_instance_free(in);
			}
		}
		cli_print_json(a);
	} else {
		if (n == 0)
			printf("No %s instances. Create one with '%s create-instance'.\n",
			       c->prog->program, c->prog->progname);
		for (i = 0; i < n; i++)
			printf("%s\n", names[i]);
	}
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return 0;
}

int verb_show_configuration(cli_ctx *c, int argc, char **argv)
{
	const tether_config_key *k;
	json_t *root, *settings;
	int oi, r;

	r = cli_parse(c, argc, argv, NULL, "[--json]",
	              "Show the instance's paths and every setting (defaults included).",
	              NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if ((r = no_positional(c, argc, argv, oi)) < 0)
		return r;
	r = cli_open_instance(c);
	if (r < 0)
		return r;
	root = json_pack("{s:s, s:s, s:s, s:s, s:s}", "program", c->prog->progname,
	                 "instance", c->inst->name, "config_path", c->inst->config_path,
	                 "state_dir", c->inst->state_dir, "run_dir", c->inst->run_dir);
	settings = json_object();
	for (k = c->prog->schema; k->section; k++) {
		json_t *sec = json_object_get(settings, k->section);
		if (!sec) {
			sec = json_object();
			json_object_set_new(settings, k->section, sec);
		}
		if (k->multi) {
			const char *vals[64];
			size_t i, nv = tether_config_get_all(c->conf, k->section, k->key, vals, 64);
			json_t *a = json_array();
			for (i = 0; i < nv && i < 64; i++)
				json_array_append_new(a, json_string(vals[i]));
			json_object_set_new(sec, k->key, a);
		} else {
			const char *v = tether_config_get(c->conf, k->section, k->key, k->def);
			json_object_set_new(sec, k->key, v ? json_string(v) : json_null());
		}
	}
	json_object_set_new(root, "settings", settings);
	if (c->json) {
		cli_print_json(root);
		return 0;
	}
	printf("%s instance '%s'\n  config: %s\n  state:  %s\n  run:    %s\n", c->prog->program,
	       c->inst->name, c->inst->config_path, c->inst->state_dir, c->inst->run_dir);
	{
		const char *sname;
		json_t *sec;
		json_object_foreach(settings, sname, sec) {
			const char *key;
			json_t *val;
			printf("[%s]\n", sname);
			json_object_foreach(sec, key, val) {
				if (json_is_array(val)) {
					size_t i;
					json_t *e;
					if (json_array_size(val) == 0)
						printf("  %s = (none)\n", key);
					json_array_foreach(val, i, e)
						printf("  %s = %s\n", key, json_string_value(e));
				} else {
					printf("  %s = %s\n", key, json_is_string(val) ? json_string_value(val) : "(unset)");
				}
			}
		}
	}
	json_decref(root);
	return 0;
}

int verb_version(cli_ctx *c, int argc, char **argv)
{
	int oi, r;

	r = cli_parse(c, argc, argv, NULL, "[--json]", "Show the version.", NULL, NULL, &oi);
	if (r)
		return r > 0 ? 0 : r;
	if ((r = no_positional(c, argc, argv, oi)) < 0)
		return r;
	if (c->json)
		cli_print_json(json_pack("{s:s, s:s, s:s, s:s}", "program", c->prog->progname,
		                         "version", PACKAGE_VERSION, "protocol", "1.0",
		                         "provider_abi", "1.0"));
	else
		printf("%s %s (protocol 1.0, provider ABI %d.%d)\n", c->prog->progname, PACKAGE_VERSION,
		       TETHER_PROVIDER_ABI_MAJOR, TETHER_PROVIDER_ABI_MINOR);
	return 0;
}
