package io.opsloop.registry;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import java.util.List;
import javax.enterprise.context.ApplicationScoped;
import javax.enterprise.inject.Produces;

/**
 * Apicurio's config-index build extension is not published, so nothing lists the settings it lets an admin
 * change at run time; this registry has none (its settings come from system properties at start).
 */
@ApplicationScoped
public class NoDynamicProperties {
    @Produces
    @ApplicationScoped
    DynamicConfigPropertyList dynamicProperties() {
        return new DynamicConfigPropertyList(List.of());
    }
}
